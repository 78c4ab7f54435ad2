//! How an AI request finds its model and starts: which models to try (the caller's, or
//! ai-router's choice and its fallback chain), what each model is (model-management's
//! spec), the budget, the cache and the provider call up to the first piece, and the
//! outcome reports to the router. The stream the caller sees and the record are in
//! [`super::chat`]; embeddings in [`super::embed`].
//!
//! Fallback happens only before the first token: a model that fails after it has started
//! answering fails the request (the caller already holds part of an answer; a second
//! model's text would not continue it). A request's record is written however it ends —
//! including when the caller goes away mid-stream (`cancelled`, by the [`Recorder`]'s
//! drop), which is also when the provider's connection closes.

use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::ai_integration::v1::{FinishReason, ServedBy, Usage};
use aicore_proto::aicore::ai_router::v1 as router;
use aicore_proto::aicore::model_management::v1 as mm;
use aicore_proto::{CallOptions, Code, Metadata, Status};
use aicore_runtime::Ctx;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::AiIntegrationConfig;
use super::accounting;
use super::offline;
use super::openai::{Deadlines, OpenAi};
use super::provider::{ChatCall, Message, Params, Piece, Pieces, ProviderError, estimate_tokens};

/// How long ai-integration waits for the router and model-management.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an outcome report to the router may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the handlers share.
pub struct Inner {
    pub ctx: Ctx,
    pub config: AiIntegrationConfig,
    pub providers: std::collections::BTreeMap<String, Arc<OpenAi>>,
    pub(super) cache: moka::sync::Cache<[u8; 32], Arc<Cached>>,
    pub(super) targets: moka::sync::Cache<String, Target>,
}

/// A cached answer.
pub(super) enum Cached {
    Text { text: String, finish: FinishReason },
    Vectors(Vec<Vec<f32>>),
}

/// A model as ai-integration calls it.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) model_id: String,
    pub(super) provider_id: String,
    pub(super) provider_model: String,
    pub(super) endpoint: String,
    pub(super) context_length: u32,
    pub(super) embedding_dimensions: u32,
}

impl Target {
    fn offline() -> Target {
        Target {
            model_id: offline::ID.into(),
            provider_id: offline::ID.into(),
            provider_model: offline::ID.into(),
            endpoint: String::new(),
            context_length: 0,
            embedding_dimensions: 0,
        }
    }

    pub(super) fn served_by(&self) -> ServedBy {
        ServedBy {
            model_id: self.model_id.clone(),
            provider_id: self.provider_id.clone(),
            offline: self.provider_id == offline::ID,
            cached: false,
            provider_model: self.provider_model.clone(),
            decision_id: String::new(),
            failed_model_ids: Vec::new(),
        }
    }
}

/// A Complete or Chat, validated.
pub struct Job {
    pub rpc: &'static str,
    pub model_id: String,
    pub messages: Vec<Message>,
    pub params: Params,
    pub player: String,
    pub no_cache: bool,
    pub meta: Metadata,
}

impl Job {
    pub(super) fn prompt_text(&self) -> String {
        self.messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn deterministic(&self) -> bool {
        !self.no_cache && (self.params.temperature == Some(0.0) || self.params.seed.is_some())
    }
}

/// The models to try, in order.
pub(super) struct Plan {
    pub(super) decision_id: String,
    pub(super) models: Vec<String>,
}

/// A generation that has started: who serves it and its pieces.
pub(super) struct Started {
    pub(super) served_by: ServedBy,
    pub(super) first: Piece,
    pub(super) rest: Pieces,
    pub(super) target: Target,
    pub(super) cache_key: Option<[u8; 32]>,
}

fn lookup_options() -> CallOptions {
    CallOptions::timeout(LOOKUP_TIMEOUT)
}

impl Inner {
    pub fn new(
        ctx: Ctx,
        config: AiIntegrationConfig,
        providers: std::collections::BTreeMap<String, Arc<OpenAi>>,
    ) -> Inner {
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_entries)
            .time_to_live(Duration::from_secs(config.cache_ttl_secs.max(1)))
            .build();
        let targets = moka::sync::Cache::builder()
            .max_capacity(4096)
            .time_to_live(Duration::from_millis(config.model_cache_ms.max(1)))
            .build();
        Inner {
            ctx,
            config,
            providers,
            cache,
            targets,
        }
    }

    pub(super) fn deadlines(&self, meta: &Metadata, arrived: tokio::time::Instant) -> Deadlines {
        let cap = |d: tokio::time::Instant| match meta.deadline {
            Some(m) => d.min(tokio::time::Instant::from_std(m)),
            None => d,
        };
        Deadlines {
            first: cap(arrived + Duration::from_millis(self.config.first_token_timeout_ms)),
            total: cap(arrived + Duration::from_millis(self.config.total_timeout_ms)),
        }
    }

    /// Refuses a player past their hourly budget.
    pub(super) fn check_budget(&self, player: &str) -> Result<(), Status> {
        let limit = self.config.player_tokens_per_hour;
        if limit == 0 || player.is_empty() {
            return Ok(());
        }
        let now = self.ctx.clock.now();
        let hour = accounting::hour_of(now);
        let used = accounting::hour_tokens(&self.ctx.store, player, hour)?;
        if used >= limit {
            let next = std::time::UNIX_EPOCH + Duration::from_secs((hour + 1) * 3600);
            let wait = next.duration_since(now).unwrap_or_default();
            return Err(Status::with_field(
                Code::ResourceExhausted,
                "player_id",
                format!("used {used} of {limit} AI tokens this hour"),
            )
            .with_retry_after(wait));
        }
        Ok(())
    }

    /// The models to try for `capability`: the caller's, or the router's choice and chain.
    pub(super) async fn plan(
        &self,
        model_id: &str,
        capability: router::Capability,
        player: &str,
        required_context: u32,
        meta: &Metadata,
    ) -> Result<Plan, Status> {
        if !model_id.is_empty() {
            return Ok(Plan {
                decision_id: String::new(),
                models: vec![model_id.to_string()],
            });
        }
        let client = match self.ctx.client() {
            Ok(c) => c,
            Err(_) if self.config.offline_fallback => return Ok(offline_plan()),
            Err(e) => return Err(e),
        };
        let route = router::AiRouterClient::new(client.clone())
            .route(
                router::RouteRequest {
                    capability: capability as i32,
                    player_id: player.to_string(),
                    latency_budget: None,
                    required_context,
                    profile: String::new(),
                    exclude_model_ids: Vec::new(),
                    preferred_model_id: String::new(),
                },
                &CallOptions {
                    traceparent: meta.traceparent.clone(),
                    request_id: meta.request_id.clone(),
                    ..lookup_options()
                },
            )
            .await;
        match route {
            Ok(r) => {
                let mut models = vec![r.model_id];
                models.extend(
                    r.fallback_model_ids
                        .into_iter()
                        .take(self.config.max_fallbacks),
                );
                Ok(Plan {
                    decision_id: r.decision_id,
                    models,
                })
            }
            Err(e) if e.code == Code::Unavailable && self.config.offline_fallback => {
                tracing::debug!(error = %e, "ai-router not answering; using the offline provider");
                Ok(offline_plan())
            }
            Err(e) => Err(Status {
                message: format!("ai-router: {}", e.message),
                ..e
            }),
        }
    }

    /// What model `model_id` is, from model-management (cached briefly).
    pub(super) async fn resolve(&self, model_id: &str) -> Result<Target, Status> {
        if let Some(t) = self.targets.get(model_id) {
            return Ok(t);
        }
        let got = match self.ctx.client() {
            Ok(c) => {
                mm::ModelManagementClient::new(c.clone())
                    .get(
                        mm::GetRequest {
                            model_id: model_id.to_string(),
                        },
                        &lookup_options(),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let target = match got {
            Ok(r) => {
                let model = r.model.unwrap_or_default();
                let spec = model.spec.unwrap_or_default();
                if spec.disabled || model.status == mm::ModelStatus::Disabled as i32 {
                    return Err(Status::with_field(
                        Code::FailedPrecondition,
                        "model_id",
                        format!("model {model_id} is disabled"),
                    ));
                }
                if spec.provider_id != offline::ID
                    && !self.providers.contains_key(&spec.provider_id)
                {
                    return Err(Status::with_field(
                        Code::FailedPrecondition,
                        "model_id",
                        format!(
                            "model {model_id} names provider {:?}, which is not configured in [domains.ai_integration]",
                            spec.provider_id
                        ),
                    ));
                }
                Target {
                    model_id: model_id.to_string(),
                    provider_model: if spec.provider_model.is_empty() {
                        model_id.to_string()
                    } else {
                        spec.provider_model
                    },
                    provider_id: spec.provider_id,
                    endpoint: spec.endpoint,
                    context_length: spec.context_length,
                    embedding_dimensions: spec.embedding_dimensions,
                }
            }
            // The built-in model needs no registry.
            Err(e)
                if model_id == offline::ID
                    && matches!(e.code, Code::NotFound | Code::Unavailable) =>
            {
                Target::offline()
            }
            Err(e) if e.code == Code::NotFound => {
                return Err(Status::with_field(
                    Code::NotFound,
                    "model_id",
                    format!("no model {model_id} is registered"),
                ));
            }
            Err(e) => {
                return Err(Status {
                    message: format!("model-management: {}", e.message),
                    ..e
                });
            }
        };
        self.targets.insert(model_id.to_string(), target.clone());
        Ok(target)
    }

    /// Tells the router how a call went (in the background, bounded: the caller does
    /// not wait for it).
    pub(super) fn report(
        &self,
        decision_id: &str,
        model_id: &str,
        outcome: Result<(Duration, Usage), &ProviderError>,
    ) {
        let Ok(client) = self.ctx.client() else {
            return;
        };
        let (success, latency, usage, error) = match outcome {
            Ok((latency, usage)) => (true, latency, usage, String::new()),
            Err(e) if !e.counts_against_model() => return,
            Err(e) => (
                false,
                Duration::ZERO,
                Usage::default(),
                e.reason().to_string(),
            ),
        };
        let request = router::ReportOutcomeRequest {
            decision_id: decision_id.to_string(),
            model_id: model_id.to_string(),
            success,
            latency: prost_types::Duration::try_from(latency).ok(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            error,
        };
        let client = router::AiRouterClient::new(client.clone());
        self.ctx.spawn(async move {
            if let Err(e) = client
                .report_outcome(request, &CallOptions::timeout(REPORT_TIMEOUT))
                .await
            {
                tracing::debug!(error = %e, "outcome not reported to ai-router");
            }
        });
    }

    /// Starts generating: follows the plan until a model gives its first piece.
    pub(super) async fn start(
        &self,
        job: &Job,
        arrived: tokio::time::Instant,
    ) -> Result<Started, (Status, ServedBy)> {
        let fail = |s: Status| (s, ServedBy::default());
        self.check_budget(&job.player).map_err(fail)?;
        let prompt_tokens = estimate_tokens(&job.prompt_text());
        let plan = self
            .plan(
                &job.model_id,
                if job.rpc == "chat" {
                    router::Capability::Chat
                } else {
                    router::Capability::Completion
                },
                &job.player,
                prompt_tokens.saturating_add(job.params.max_tokens),
                &job.meta,
            )
            .await
            .map_err(fail)?;
        let by = self.deadlines(&job.meta, arrived);
        let pinned = !job.model_id.is_empty();
        self.follow_plan(
            &plan,
            pinned,
            by.first,
            |target, mut served_by| async move {
                if target.context_length > 0
                    && prompt_tokens.saturating_add(job.params.max_tokens) > target.context_length
                    && pinned
                {
                    return Tried::Refused(too_long(&target, prompt_tokens), served_by);
                }
                let call = ChatCall {
                    model: target.provider_model.clone(),
                    endpoint: target.endpoint.clone(),
                    messages: job.messages.clone(),
                    params: job.params.clone(),
                };
                let cache_key = (job.deterministic() && target.provider_id != offline::ID)
                    .then(|| cache_key("chat", &target, &call));
                if let Some(k) = cache_key
                    && let Some(hit) = self.cache.get(&k)
                    && let Cached::Text { text, finish } = hit.as_ref()
                {
                    served_by.cached = true;
                    return Tried::Served(replayed(text.clone(), *finish, served_by, target));
                }
                let outcome = self.call_provider(&target, &call, by).await;
                match outcome {
                    Ok(start) => Tried::Served(Started {
                        served_by,
                        first: start.first,
                        rest: start.rest,
                        target,
                        cache_key,
                    }),
                    Err(e) => Tried::Failed(e, served_by),
                }
            },
        )
        .await
    }

    /// The first piece of `call` from `target`'s provider (the offline one answers here).
    async fn call_provider(
        &self,
        target: &Target,
        call: &ChatCall,
        by: Deadlines,
    ) -> Result<super::provider::ChatStart, ProviderError> {
        if target.provider_id == offline::ID {
            // Never empty: it ends with its `Done`.
            let mut pieces = offline::pieces(call);
            let first = pieces.remove(0);
            Ok(super::provider::ChatStart {
                first,
                rest: futures::stream::iter(pieces.into_iter().map(Ok)).boxed(),
            })
        } else {
            match self.providers.get(&target.provider_id) {
                Some(p) => p.chat(call, by).await,
                None => Err(not_configured(&target.provider_id)),
            }
        }
    }

    /// Follows the router's `plan`: each model in turn is resolved and given to
    /// `attempt`, until one serves. A model that cannot be resolved is skipped when the
    /// caller did not pin one (`pinned`) and more are left; a provider failure is
    /// reported to the router and falls back to the next model while it may
    /// ([`ProviderError::falls_back`]) and the first answer is still due by `first_by`.
    /// The [`ServedBy`] given to `attempt` names the plan's decision and the models that
    /// failed before.
    pub(super) async fn follow_plan<T, F, Fut>(
        &self,
        plan: &Plan,
        pinned: bool,
        first_by: tokio::time::Instant,
        mut attempt: F,
    ) -> Result<T, (Status, ServedBy)>
    where
        F: FnMut(Target, ServedBy) -> Fut,
        Fut: std::future::Future<Output = Tried<T>>,
    {
        let mut failed: Vec<String> = Vec::new();
        let mut last: Option<(Status, ServedBy)> = None;
        for (i, model_id) in plan.models.iter().enumerate() {
            let more = i + 1 < plan.models.len();
            let target = match self.resolve(model_id).await {
                Ok(t) => t,
                Err(e) if more && !pinned => {
                    failed.push(model_id.clone());
                    last = Some((e, ServedBy::default()));
                    continue;
                }
                Err(e) => return Err((e, ServedBy::default())),
            };
            let mut served_by = target.served_by();
            served_by.decision_id = plan.decision_id.clone();
            served_by.failed_model_ids = failed.clone();
            let model_id = target.model_id.clone();
            match attempt(target, served_by).await {
                Tried::Served(t) => return Ok(t),
                Tried::Refused(s, served_by) => return Err((s, served_by)),
                Tried::Failed(e, served_by) => {
                    self.report(&plan.decision_id, &model_id, Err(&e));
                    tracing::debug!(model = %model_id, error = %e, "model failed before its first answer");
                    let retry_next =
                        e.falls_back() && more && tokio::time::Instant::now() < first_by;
                    failed.push(model_id);
                    let fallen = (Status::from(e), served_by);
                    if !retry_next {
                        return Err(fallen);
                    }
                    last = Some(fallen);
                }
            }
        }
        Err(last.unwrap_or_else(|| (Status::internal("no model to try"), ServedBy::default())))
    }
}

/// What one model of a plan gave ([`Inner::follow_plan`]).
pub(super) enum Tried<T> {
    /// It served.
    Served(T),
    /// Its provider failed: the next model may be tried.
    Failed(ProviderError, ServedBy),
    /// The request cannot be served by this model nor any other (e.g. it does not fit
    /// the pinned model's context): no fallback.
    Refused(Status, ServedBy),
}

/// The refusal of a prompt (about `prompt_tokens`) and max_tokens beyond `target`'s context.
fn too_long(target: &Target, prompt_tokens: u32) -> Status {
    Status::invalid(
        "params.max_tokens",
        format!(
            "the prompt (about {prompt_tokens} tokens) and max_tokens exceed model {}'s context of {} tokens",
            target.model_id, target.context_length
        ),
    )
}

/// A start replaying a cached answer: its whole text as the first piece, then `Done`.
fn replayed(text: String, finish: FinishReason, served_by: ServedBy, target: Target) -> Started {
    let rest = futures::stream::iter([Ok(Piece::Done {
        finish,
        usage: Some(Default::default()),
    })]);
    Started {
        served_by,
        first: Piece::Text(text),
        rest: rest.boxed(),
        target,
        cache_key: None,
    }
}

/// The error for a model whose provider is not configured.
pub(super) fn not_configured(provider_id: &str) -> ProviderError {
    ProviderError::new(
        provider_id,
        super::provider::Failure::Unavailable,
        "not configured",
    )
}

pub(super) fn offline_plan() -> Plan {
    Plan {
        decision_id: String::new(),
        models: vec![offline::ID.to_string()],
    }
}

fn cache_key(kind: &str, target: &Target, call: &ChatCall) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        kind,
        &target.model_id,
        &target.provider_id,
        &target.provider_model,
        &target.endpoint,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for m in &call.messages {
        h.update([m.role as u8]);
        h.update((m.content.len() as u64).to_le_bytes());
        h.update(m.content.as_bytes());
    }
    let p = &call.params;
    h.update(p.max_tokens.to_le_bytes());
    h.update(format!("{:?}{:?}{:?}{:?}", p.temperature, p.top_p, p.stop, p.seed).as_bytes());
    h.finalize().into()
}
