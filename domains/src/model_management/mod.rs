//! model-management: the registry of AI models — what each can do (chat, completion,
//! embedding), which ai-integration provider serves it and under what name, its context
//! length, cost per token and tier, its status, and which model is the default per
//! capability. ai-router chooses among these models and ai-integration reads a model's
//! spec before calling it. Probe really calls the model (through ai-integration, over
//! NATS, bypassing the cache) and records the latency and outcome as the model's status.
//!
//! The built-in offline model (`offline`, provider `offline`) is registered on first
//! start (`builtin_offline_model`), so a fresh appliance answers every AI request with no
//! model configured; an operator may disable or remove it like any other (it is not
//! registered again once removed).
//!
//! Tables:
//! - `model_management.models`: model id → [`Model`] (its `default_for` is not stored:
//!   it is read from the defaults table, so the two never disagree).
//! - `model_management.defaults`: capability number (decimal) → model id.
//! - `model_management.meta`: `seeded` once the built-in model was registered.
//!
//! A model's `version` counts changes of its spec (Register, Update); probes change its
//! status, latency and error without a new version, so an operator's `expected_version`
//! is not defeated by a probe.

use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::ai_integration::v1 as ai;
use aicore_proto::aicore::model_management::v1::{
    Capability, GetRequest, GetResponse, ListRequest, ListResponse, Model, ModelManagementHandler,
    ModelSpec, ModelStatus, ModelTier, ProbeRequest, ProbeResponse, RegisterRequest,
    RegisterResponse, RemoveRequest, RemoveResponse, SetDefaultRequest, SetDefaultResponse,
    TokenCost, UpdateRequest, UpdateResponse,
};
use aicore_proto::{CallOptions, Code, Request, Status};
use aicore_runtime::store::{Store, Tx};
use aicore_runtime::{Ctx, paging, validate};

const MODELS: &str = "model_management.models";
const DEFAULTS: &str = "model_management.defaults";
const META: &str = "model_management.meta";
const SEEDED: &[u8] = b"seeded";
const LIST_TOKEN: u8 = b'M';
/// Longest model id.
const MAX_ID: usize = 64;
/// The built-in offline model's id (and its provider's).
pub const OFFLINE: &str = "offline";

/// Configuration of model-management (`[domains.model_management]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelManagementConfig {
    /// Register the built-in offline model on first start.
    pub builtin_offline_model: bool,
    /// A probe answered slower than this (in milliseconds) marks the model DEGRADED.
    pub degraded_latency_ms: u64,
    /// Longest a probe waits for the model, in milliseconds (within the caller's deadline).
    pub probe_timeout_ms: u64,
    /// Page size of List when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of List.
    pub max_page_size: u32,
}

impl Default for ModelManagementConfig {
    fn default() -> Self {
        ModelManagementConfig {
            builtin_offline_model: true,
            degraded_latency_ms: 5_000,
            probe_timeout_ms: 20_000,
            default_page_size: 50,
            max_page_size: 500,
        }
    }
}

/// The model-management domain.
pub struct ModelManagement {
    ctx: Ctx,
    config: ModelManagementConfig,
}

/// The built-in offline model's spec.
pub fn offline_spec() -> ModelSpec {
    ModelSpec {
        display_name: "Offline (built-in, deterministic templates)".into(),
        provider_id: OFFLINE.into(),
        endpoint: String::new(),
        provider_model: OFFLINE.into(),
        capabilities: vec![
            Capability::Chat as i32,
            Capability::Completion as i32,
            Capability::Embedding as i32,
        ],
        context_length: 0,
        cost: Some(TokenCost::default()),
        tier: ModelTier::Small as i32,
        disabled: false,
        embedding_dimensions: 0,
    }
}

fn check_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid(
            "model_id",
            format!("must be 1 to {MAX_ID} characters of [a-z0-9_.:-]"),
        ))
    }
}

fn capability(n: i32, field: &str) -> Result<Capability, Status> {
    match Capability::try_from(n) {
        Ok(Capability::Unspecified) | Err(_) => Err(Status::invalid(
            field,
            "must be CAPABILITY_CHAT, CAPABILITY_COMPLETION or CAPABILITY_EMBEDDING",
        )),
        Ok(c) => Ok(c),
    }
}

/// Checks a spec, normalising it (capabilities sorted and deduplicated, an empty
/// provider model name becoming the model id, a missing cost zero).
fn check_spec(spec: Option<ModelSpec>, model_id: &str) -> Result<ModelSpec, Status> {
    let mut s = spec.ok_or_else(|| Status::invalid("spec", "is required"))?;
    if s.display_name.chars().count() > 128 || s.display_name.chars().any(char::is_control) {
        return Err(Status::invalid(
            "spec.display_name",
            "at most 128 characters without control characters",
        ));
    }
    validate::slug(&s.provider_id, "spec.provider_id", 64)?;
    let url = s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://");
    if !(s.endpoint.is_empty() || url) {
        return Err(Status::invalid(
            "spec.endpoint",
            "must be empty or an http:// or https:// URL",
        ));
    }
    if s.provider_model.is_empty() {
        s.provider_model = model_id.to_string();
    }
    if s.provider_model.chars().count() > 256 || s.provider_model.chars().any(char::is_control) {
        return Err(Status::invalid(
            "spec.provider_model",
            "at most 256 characters without control characters",
        ));
    }
    if s.capabilities.is_empty() {
        return Err(Status::invalid("spec.capabilities", "at least one"));
    }
    for (i, c) in s.capabilities.iter().enumerate() {
        capability(*c, &format!("spec.capabilities[{i}]"))?;
    }
    s.capabilities.sort_unstable();
    s.capabilities.dedup();
    if s.context_length > 10_000_000 {
        return Err(Status::invalid("spec.context_length", "at most 10000000"));
    }
    let cost = s.cost.get_or_insert_with(Default::default);
    if cost.input_micros_per_million_tokens < 0 || cost.output_micros_per_million_tokens < 0 {
        return Err(Status::invalid("spec.cost", "costs must not be negative"));
    }
    let priced =
        cost.input_micros_per_million_tokens > 0 || cost.output_micros_per_million_tokens > 0;
    let code_ok = cost.currency.len() == 3 && cost.currency.bytes().all(|b| b.is_ascii_uppercase());
    if (priced || !cost.currency.is_empty()) && !code_ok {
        return Err(Status::invalid(
            "spec.cost.currency",
            "an ISO 4217 code such as USD when a cost is set",
        ));
    }
    match ModelTier::try_from(s.tier) {
        Ok(ModelTier::Unspecified) | Err(_) => {
            return Err(Status::invalid(
                "spec.tier",
                "must be MODEL_TIER_SMALL, MODEL_TIER_MEDIUM or MODEL_TIER_LARGE",
            ));
        }
        Ok(_) => {}
    }
    if s.embedding_dimensions > 65_536 {
        return Err(Status::invalid(
            "spec.embedding_dimensions",
            "at most 65536",
        ));
    }
    Ok(s)
}

fn default_key(c: Capability) -> Vec<u8> {
    (c as i32).to_string().into_bytes()
}

const CAPABILITIES: [Capability; 3] = [
    Capability::Chat,
    Capability::Completion,
    Capability::Embedding,
];

/// The capabilities `model_id` is the default for, read in a transaction.
fn defaults_of_tx(tx: &Tx<'_>, model_id: &str) -> Result<Vec<i32>, Status> {
    let mut out = Vec::new();
    for c in CAPABILITIES {
        if tx.get(DEFAULTS, &default_key(c))?.as_deref() == Some(model_id.as_bytes()) {
            out.push(c as i32);
        }
    }
    Ok(out)
}

fn defaults_of(store: &Store, model_id: &str) -> Result<Vec<i32>, Status> {
    let mut out = Vec::new();
    for c in CAPABILITIES {
        if store.get(DEFAULTS, &default_key(c))?.as_deref() == Some(model_id.as_bytes()) {
            out.push(c as i32);
        }
    }
    Ok(out)
}

fn not_found(id: &str) -> Status {
    Status::with_field(Code::NotFound, "model_id", format!("no model {id}"))
}

impl ModelManagement {
    /// The domain on a context.
    pub fn new(ctx: Ctx, config: ModelManagementConfig) -> Self {
        ModelManagement { ctx, config }
    }

    fn read(&self, id: &str) -> Result<Model, Status> {
        let mut m: Model = self
            .ctx
            .store
            .get_msg(MODELS, id.as_bytes())?
            .ok_or_else(|| not_found(id))?;
        m.default_for = defaults_of(&self.ctx.store, id)?;
        Ok(m)
    }

    /// Registers the built-in offline model once (never again after a removal).
    pub async fn seed(&self) -> Result<(), Status> {
        if !self.config.builtin_offline_model {
            return Ok(());
        }
        let now = self.ctx.now_ts();
        self.ctx
            .store
            .write(move |tx| {
                if tx.get(META, SEEDED)?.is_some() {
                    return Ok(());
                }
                tx.put(META, SEEDED, b"1".to_vec());
                if tx.get(MODELS, OFFLINE.as_bytes())?.is_none() {
                    let m = Model {
                        model_id: OFFLINE.into(),
                        spec: Some(offline_spec()),
                        status: ModelStatus::Ready as i32,
                        version: 1,
                        updated_at: Some(now),
                        ..Default::default()
                    };
                    tx.put_msg(MODELS, OFFLINE.as_bytes(), &m);
                }
                Ok(())
            })
            .await
    }
}

impl ModelManagementHandler for ModelManagement {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<RegisterResponse, Status> {
        let req = request.body;
        check_id(&req.model_id)?;
        let spec = check_spec(req.spec, &req.model_id)?;
        let now = self.ctx.now_ts();
        let id = req.model_id;
        let model = self
            .ctx
            .store
            .write(move |tx| {
                if let Some(mut m) = tx.get_msg::<Model>(MODELS, id.as_bytes())? {
                    if m.spec.as_ref() != Some(&spec) {
                        return Err(Status::with_field(
                            Code::Conflict,
                            "model_id",
                            format!("model {id} is registered with another spec; use Update"),
                        ));
                    }
                    m.default_for = defaults_of_tx(tx, &id)?;
                    return Ok(m);
                }
                let m = Model {
                    model_id: id.clone(),
                    status: if spec.disabled {
                        ModelStatus::Disabled
                    } else {
                        ModelStatus::Unknown
                    } as i32,
                    spec: Some(spec),
                    version: 1,
                    updated_at: Some(now),
                    ..Default::default()
                };
                tx.put_msg(MODELS, id.as_bytes(), &m);
                Ok(m)
            })
            .await?;
        Ok(RegisterResponse { model: Some(model) })
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<UpdateResponse, Status> {
        let req = request.body;
        check_id(&req.model_id)?;
        let spec = check_spec(req.spec, &req.model_id)?;
        let now = self.ctx.now_ts();
        let (id, want) = (req.model_id, req.expected_version);
        let model = self
            .ctx
            .store
            .write(move |tx| {
                let mut m: Model = tx
                    .get_msg(MODELS, id.as_bytes())?
                    .ok_or_else(|| not_found(&id))?;
                validate::expected_version(want, m.version, "model")?;
                let defaults = defaults_of_tx(tx, &id)?;
                if let Some(c) = defaults.iter().find(|c| !spec.capabilities.contains(c)) {
                    return Err(Status::with_field(
                        Code::FailedPrecondition,
                        "spec.capabilities",
                        format!(
                            "model {id} is the default for {}; set another default first",
                            Capability::try_from(*c).map_or("?", |c| c.as_str_name())
                        ),
                    ));
                }
                m.status = match (spec.disabled, ModelStatus::try_from(m.status)) {
                    (true, _) => ModelStatus::Disabled,
                    (false, Ok(ModelStatus::Disabled)) => ModelStatus::Unknown,
                    (false, Ok(s)) => s,
                    (false, Err(_)) => ModelStatus::Unknown,
                } as i32;
                m.spec = Some(spec);
                m.version += 1;
                m.updated_at = Some(now);
                tx.put_msg(MODELS, id.as_bytes(), &m);
                m.default_for = defaults;
                Ok(m)
            })
            .await?;
        Ok(UpdateResponse { model: Some(model) })
    }

    async fn remove(&self, request: Request<RemoveRequest>) -> Result<RemoveResponse, Status> {
        let req = request.body;
        check_id(&req.model_id)?;
        let (id, want) = (req.model_id, req.expected_version);
        let removed = self
            .ctx
            .store
            .write(move |tx| {
                let Some(m) = tx.get_msg::<Model>(MODELS, id.as_bytes())? else {
                    return Ok(false);
                };
                validate::expected_version(want, m.version, "model")?;
                if !defaults_of_tx(tx, &id)?.is_empty() {
                    return Err(Status::with_field(
                        Code::FailedPrecondition,
                        "model_id",
                        format!("model {id} is a default; set another default first"),
                    ));
                }
                tx.delete(MODELS, id.as_bytes());
                Ok(true)
            })
            .await?;
        Ok(RemoveResponse { removed })
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<ListResponse, Status> {
        let req = request.body;
        let mut wanted = Vec::new();
        for (i, c) in req.capabilities.iter().enumerate() {
            wanted.push(capability(*c, &format!("capabilities[{i}]"))? as i32);
        }
        if !req.provider_id.is_empty() {
            validate::slug(&req.provider_id, "provider_id", 64)?;
        }
        let limit = paging::page_size(
            req.page_size,
            self.config.default_page_size,
            self.config.max_page_size,
        )?;
        let mut page = paging::Page::start(
            paging::Listing {
                store: &self.ctx.store,
                table: MODELS,
                prefix: b"",
                kind: LIST_TOKEN,
                limit,
                max_scan: limit.saturating_mul(20).max(1000),
            },
            &req.page_token,
        )?;
        while let Some((k, v)) = page.next_row()? {
            let mut m: Model = aicore_runtime::store::decode(MODELS, v)?;
            let spec = m.spec.clone().unwrap_or_default();
            if !wanted.iter().all(|c| spec.capabilities.contains(c))
                || (!req.provider_id.is_empty() && spec.provider_id != req.provider_id)
            {
                continue;
            }
            m.default_for = defaults_of(&self.ctx.store, &String::from_utf8_lossy(&k))?;
            page.keep(m);
        }
        let (models, next_page_token) = page.finish();
        Ok(ListResponse {
            models,
            next_page_token,
        })
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<GetResponse, Status> {
        check_id(&request.body.model_id)?;
        Ok(GetResponse {
            model: Some(self.read(&request.body.model_id)?),
        })
    }

    async fn set_default(
        &self,
        request: Request<SetDefaultRequest>,
    ) -> Result<SetDefaultResponse, Status> {
        let req = request.body;
        let cap = capability(req.capability, "capability")?;
        check_id(&req.model_id)?;
        let id = req.model_id;
        let (model, previous_model_id) = self
            .ctx
            .store
            .write(move |tx| {
                let mut m: Model = tx
                    .get_msg(MODELS, id.as_bytes())?
                    .ok_or_else(|| not_found(&id))?;
                let spec = m.spec.clone().unwrap_or_default();
                if !spec.capabilities.contains(&(cap as i32)) {
                    return Err(Status::with_field(
                        Code::FailedPrecondition,
                        "capability",
                        format!("model {id} does not have {}", cap.as_str_name()),
                    ));
                }
                let previous = tx
                    .get(DEFAULTS, &default_key(cap))?
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                tx.put(DEFAULTS, &default_key(cap), id.clone().into_bytes());
                m.default_for = defaults_of_tx(tx, &id)?;
                if !m.default_for.contains(&(cap as i32)) {
                    m.default_for.push(cap as i32);
                    m.default_for.sort_unstable();
                }
                Ok((
                    m,
                    if previous == id {
                        String::new()
                    } else {
                        previous
                    },
                ))
            })
            .await?;
        Ok(SetDefaultResponse {
            model: Some(model),
            previous_model_id,
        })
    }

    async fn probe(&self, request: Request<ProbeRequest>) -> Result<ProbeResponse, Status> {
        let Request { body: req, meta } = request;
        check_id(&req.model_id)?;
        let model = self.read(&req.model_id)?;
        let spec = model.spec.clone().unwrap_or_default();
        if spec.disabled {
            return Err(Status::with_field(
                Code::FailedPrecondition,
                "model_id",
                format!("model {} is disabled; enable it to probe it", req.model_id),
            ));
        }
        let client = self.ctx.client()?.clone();
        let mut wait = Duration::from_millis(self.config.probe_timeout_ms);
        if let Some(left) = meta.remaining() {
            // Keep time to record the outcome.
            wait = wait.min(left.saturating_sub(Duration::from_millis(500)));
        }
        let options = CallOptions::timeout(wait.max(Duration::from_millis(1)));
        let ai = ai::AiIntegrationClient::new(client);
        let text_capable = spec
            .capabilities
            .iter()
            .any(|c| *c == Capability::Chat as i32 || *c == Capability::Completion as i32);
        let started = tokio::time::Instant::now();
        let outcome = if text_capable {
            ai.complete(
                ai::CompleteRequest {
                    prompt: "ping".into(),
                    model_id: req.model_id.clone(),
                    params: Some(ai::GenerationParams {
                        max_tokens: 1,
                        temperature: Some(0.0),
                        ..Default::default()
                    }),
                    no_cache: true,
                    ..Default::default()
                },
                &options,
            )
            .await
            .map(|_| ())
        } else {
            ai.embed(
                ai::EmbedRequest {
                    inputs: vec!["ping".into()],
                    model_id: req.model_id.clone(),
                    player_id: String::new(),
                },
                &options,
            )
            .await
            .map(|_| ())
        };
        let latency = started.elapsed();
        let status = match &outcome {
            Ok(()) if latency > Duration::from_millis(self.config.degraded_latency_ms) => {
                ModelStatus::Degraded
            }
            Ok(()) => ModelStatus::Ready,
            Err(_) => ModelStatus::Unavailable,
        };
        let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        let now = self.ctx.now_ts();
        let (id, err) = (req.model_id, error.clone());
        let latency_pb = prost_types::Duration::try_from(latency).ok();
        let written = latency_pb;
        self.ctx
            .store
            .write(move |tx| {
                // The model may have been removed or disabled meanwhile: record nothing.
                let Some(mut m) = tx.get_msg::<Model>(MODELS, id.as_bytes())? else {
                    return Ok(());
                };
                if m.spec.as_ref().is_some_and(|s| s.disabled) {
                    return Ok(());
                }
                m.status = status as i32;
                m.last_probed_at = Some(now);
                if err.is_empty() {
                    m.last_latency = written;
                }
                m.last_error = err;
                tx.put_msg(MODELS, id.as_bytes(), &m);
                Ok(())
            })
            .await?;
        Ok(ProbeResponse {
            ok: error.is_empty(),
            latency: latency_pb,
            error,
            status: status as i32,
            probed_at: Some(now),
        })
    }
}

impl aicore_runtime::Domain for ModelManagement {
    type Config = ModelManagementConfig;

    fn build(
        ctx: &Ctx,
        config: &ModelManagementConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let domain = Arc::new(ModelManagement::new(ctx.clone(), config.clone()));
        let seeding = domain.clone();
        ctx.spawn(async move {
            if let Err(e) = seeding.seed().await {
                tracing::warn!(error = %e, "the built-in offline model was not registered");
            }
        });
        Ok(Arc::new(
            aicore_proto::aicore::model_management::v1::ModelManagementServer(domain),
        ))
    }
}

#[cfg(test)]
mod tests;
