//! npc-behavior: NPC definitions (traits, needs, schedule, actions), their needs over
//! game time, utility-AI decisions ([`utility`]) and their relations with players. It
//! owns the definitions, the needs and the relations; game time comes from time-manager
//! and dialogue lines from ai-integration, over NATS through the small [`Minds`] trait
//! (unit tests substitute it).
//!
//! Decide reads cached rows and writes nothing, so it costs about a cached Get (plus a
//! time-manager call unless the caller gives the game time). Interact is an idempotent
//! write: its reply, dialogue line included, is replayed for a retried key without
//! asking the model again (two racing first calls may each ask; the first to commit is
//! answered to both). Memory is bounded, the least important memory forgotten first and
//! the oldest among equals.
//!
//! Needs follow the game clock without a caller: a background task
//! ([`NpcBehavior::follow_clock`]) advances every NPC on each time-manager tick
//! (`evt.time.tick`, once a game hour); a tick an NPC has already seen changes nothing.
//!
//! Tables (NPC ids are `[a-z0-9_.-]`, player ids have no control characters):
//! - `npc_behavior.npcs`: npc_id → [`NpcDefinition`].
//! - `npc_behavior.state`: npc_id → [`NpcState`] (needs as of the last Tick).
//! - `npc_behavior.relations`: npc_id `\0` player_id → [`Relation`].
//! - `npc_behavior.idempotency`: replies of Interact for their idempotency keys.
//!
//! This file holds the domain type and its handlers; beside it are `config` (the bounds),
//! `check` (input checks), `minds` (the other domains), `relations` (relations, memory,
//! dialogue lines), `clock` (needs over game time) and [`utility`] (the decisions).

mod check;
mod clock;
mod config;
mod minds;
mod relations;
pub mod utility;

pub use config::NpcBehaviorConfig;
pub use minds::{Line, Minds, OverNats};
pub use relations::remember;

use std::sync::Arc;

use aicore_proto::aicore::npc_behavior::v1::{
    DecideRequest, DecideResponse, DefineRequest, DefineResponse, GetRequest, GetResponse,
    InteractRequest, InteractResponse, NpcBehaviorHandler, NpcDefinition, NpcState, TickRequest,
    TickResponse,
};
use aicore_proto::{CallOptions, Code, Metadata, Request, Status};

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::{Ctx, validate};

use check::{check_definition, check_interaction, name, unit};
use relations::{record_interaction, relation_key};

const NPCS: &str = "npc_behavior.npcs";
const STATE: &str = "npc_behavior.state";
const RELATIONS: &str = "npc_behavior.relations";
/// Replies of Interact kept for replays of their idempotency keys.
const IDEMPOTENCY: Idempotency = Idempotency::new("npc_behavior.idempotency");

/// The npc-behavior domain.
pub struct NpcBehavior {
    ctx: Ctx,
    config: NpcBehaviorConfig,
    minds: Arc<dyn Minds>,
}

impl aicore_runtime::Domain for NpcBehavior {
    type Config = NpcBehaviorConfig;

    fn build(
        ctx: &Ctx,
        config: &NpcBehaviorConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let minds = Arc::new(OverNats { ctx: ctx.clone() });
        let domain = Arc::new(NpcBehavior::new(ctx.clone(), config.clone(), minds));
        if ctx.client.is_some() {
            tokio::runtime::Handle::try_current().map_err(|_| {
                Status::internal("npc-behavior needs a tokio runtime to follow the game clock")
            })?;
            ctx.spawn(domain.clone().follow_clock());
        }
        Ok(Arc::new(
            aicore_proto::aicore::npc_behavior::v1::NpcBehaviorServer(domain),
        ))
    }
}

impl NpcBehavior {
    /// The domain on a context, asking other domains through `minds`.
    pub fn new(ctx: Ctx, config: NpcBehaviorConfig, minds: Arc<dyn Minds>) -> Self {
        NpcBehavior { ctx, config, minds }
    }

    /// An NPC's definition and its needs as of its last tick; NotFound naming `npc_id`.
    fn load(&self, npc_id: &str) -> Result<(NpcDefinition, NpcState), Status> {
        name(npc_id, "npc_id")?;
        let def = self
            .ctx
            .store
            .get_msg_cached::<NpcDefinition>(NPCS, npc_id.as_bytes())?
            .ok_or_else(|| {
                Status::with_field(Code::NotFound, "npc_id", format!("no NPC `{npc_id}`"))
            })?;
        let state = self
            .ctx
            .store
            .get_msg_cached::<NpcState>(STATE, npc_id.as_bytes())?
            .unwrap_or(NpcState {
                ticked_to_game_seconds: -1,
                ..Default::default()
            });
        Ok((def, state))
    }
}

/// Calls on the domain's own authority, with the caller's deadline and trace.
fn own_authority(meta: &Metadata) -> CallOptions {
    CallOptions {
        caller: None,
        ..CallOptions::from_meta(meta)
    }
}

impl NpcBehaviorHandler for NpcBehavior {
    async fn define(&self, request: Request<DefineRequest>) -> Result<DefineResponse, Status> {
        let req = request.body;
        let mut npc = req
            .npc
            .ok_or_else(|| Status::invalid("npc", "is required"))?;
        check_definition(&npc, &self.config)?;
        let now = self.ctx.now_ts();
        let expected = req.expected_version;
        self.ctx
            .store
            .write(move |tx| {
                let id = npc.npc_id.clone();
                let live = tx.get_msg::<NpcDefinition>(NPCS, id.as_bytes())?;
                let have = live.as_ref().map(|l| l.version);
                validate::expected_version(expected, have.unwrap_or(0), &format!("NPC `{id}`"))?;
                // Current levels of needs that stay; new needs start at their value.
                let mut state = tx
                    .get_msg::<NpcState>(STATE, id.as_bytes())?
                    .unwrap_or(NpcState {
                        ticked_to_game_seconds: -1,
                        ..Default::default()
                    });
                state.needs = npc
                    .needs
                    .iter()
                    .map(|n| {
                        (
                            n.need_id.clone(),
                            state.needs.get(&n.need_id).copied().unwrap_or(n.value),
                        )
                    })
                    .collect();
                tx.put_msg(STATE, id.as_bytes(), &state);
                npc.version = have.unwrap_or(0) + 1;
                npc.updated_at = Some(now);
                tx.put_msg(NPCS, id.as_bytes(), &npc);
                Ok(DefineResponse { npc: Some(npc) })
            })
            .await
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<GetResponse, Status> {
        let Request { body: req, meta } = request;
        let (npc, state) = self.load(&req.npc_id)?;
        let relation = self.relation_asked(&req.npc_id, &req.player_id, &meta)?;
        Ok(GetResponse {
            npc: Some(npc),
            state: Some(state),
            relation,
        })
    }

    async fn decide(&self, request: Request<DecideRequest>) -> Result<DecideResponse, Status> {
        let Request { body: req, meta } = request;
        let (npc, state) = self.load(&req.npc_id)?;
        let relation = self.relation_asked(&req.npc_id, &req.player_id, &meta)?;
        for (k, v) in &req.context {
            unit(*v, &format!("context.{k}"), 0.0)?;
        }
        let candidates: Vec<_> = if req.candidate_action_ids.is_empty() {
            npc.actions.iter().collect()
        } else {
            let mut out = Vec::new();
            for (i, id) in req.candidate_action_ids.iter().enumerate() {
                let a = npc
                    .actions
                    .iter()
                    .find(|a| &a.action_id == id)
                    .ok_or_else(|| {
                        Status::invalid(
                            &format!("candidate_action_ids[{i}]"),
                            format!("`{id}` is not an action of `{}`", npc.npc_id),
                        )
                    })?;
                out.push(a);
            }
            out
        };
        let t = match req.at_game_seconds {
            Some(t) if t >= 0 => t,
            Some(_) => return Err(Status::invalid("at_game_seconds", "must be 0 or more")),
            None => self.minds.game_seconds(own_authority(&meta)).await?,
        };
        let needs = utility::needs_at(&npc, &state, t);
        let activity = utility::scheduled_at(&npc.schedule, t).map_or("", |e| e.activity.as_str());
        let inputs = utility::Inputs {
            traits: &npc.traits,
            needs: &needs,
            relation: relation.as_ref(),
            activity,
            context: &req.context,
        };
        let ranked = utility::rank(candidates.into_iter(), &inputs);
        Ok(DecideResponse {
            best: ranked.first().cloned(),
            ranked,
            game_seconds: t,
            current_activity: activity.to_string(),
        })
    }

    async fn interact(
        &self,
        request: Request<InteractRequest>,
    ) -> Result<InteractResponse, Status> {
        let Request { body: req, meta } = request;
        let (npc, _) = self.load(&req.npc_id)?;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        check_interaction(&req)?;
        let scope =
            String::from_utf8_lossy(&relation_key(&req.npc_id, &req.player_id)).into_owned();
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "interact", &scope, &req)?;
        // A retry is answered from the stored reply, line included, before asking the
        // model again (the write below would discard a second line anyway).
        if let Some(first) = keyed.replay::<InteractResponse>()? {
            return Ok(first);
        }
        let before = self.relation(&req.npc_id, &req.player_id)?;
        let line = if req.want_line {
            Some(self.dialogue_line(&npc, &req, &before, &meta).await?)
        } else {
            None
        };
        let now = self.ctx.now_ts();
        let max = self.config.max_memories;
        keyed
            .write(move |tx| record_interaction(tx, req, line, now, max))
            .await
    }

    async fn tick(&self, request: Request<TickRequest>) -> Result<TickResponse, Status> {
        let req = request.body;
        if req.until_game_seconds < 0 {
            return Err(Status::invalid("until_game_seconds", "must be 0 or more"));
        }
        for (i, id) in req.npc_ids.iter().enumerate() {
            name(id, &format!("npc_ids[{i}]"))?;
        }
        if req.npc_ids.len() > self.config.max_tick {
            return Err(Status::invalid(
                "npc_ids",
                format!("must hold at most {} ids", self.config.max_tick),
            ));
        }
        let ids: Vec<String> = if req.npc_ids.is_empty() {
            let rows = self
                .ctx
                .store
                .scan(NPCS, b"", b"", self.config.max_tick + 1)?;
            if rows.len() > self.config.max_tick {
                return Err(Status::with_field(
                    Code::ResourceExhausted,
                    "npc_ids",
                    format!(
                        "more than {} NPCs: tick them in batches by id",
                        self.config.max_tick
                    ),
                ));
            }
            rows.into_iter()
                .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
                .collect()
        } else {
            req.npc_ids
        };
        let advanced = self.advance(ids, req.until_game_seconds).await?;
        Ok(TickResponse { advanced })
    }
}

#[cfg(test)]
mod tests;
