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
//!
//! This file holds the tables, the domain type and its handlers; beside it are `config`
//! (the configuration), `check` (input checks), `defaults` (the defaults table),
//! `offline` (the built-in offline model) and `probe` (Probe).

mod check;
mod config;
mod defaults;
mod offline;
mod probe;

pub use config::ModelManagementConfig;
pub use offline::{OFFLINE, offline_spec};

use std::sync::Arc;

use aicore_proto::aicore::model_management::v1::{
    Capability, GetRequest, GetResponse, ListRequest, ListResponse, Model, ModelManagementHandler,
    ModelStatus, ProbeRequest, ProbeResponse, RegisterRequest, RegisterResponse, RemoveRequest,
    RemoveResponse, SetDefaultRequest, SetDefaultResponse, UpdateRequest, UpdateResponse,
};
use aicore_proto::{Code, Request, Status};
use aicore_runtime::{Ctx, paging, validate};

use check::{capability, check_id, check_spec};
use defaults::{default_key, defaults_of, defaults_of_tx};

const MODELS: &str = "model_management.models";
const DEFAULTS: &str = "model_management.defaults";
const META: &str = "model_management.meta";
const SEEDED: &[u8] = b"seeded";
const LIST_TOKEN: u8 = b'M';

/// The model-management domain.
pub struct ModelManagement {
    ctx: Ctx,
    config: ModelManagementConfig,
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
        self.probe_model(request).await
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
