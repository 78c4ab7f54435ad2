//! story-teller: arcs (graphs of nodes and choices, checked on definition by [`graph`])
//! played per player, and their narration. It owns the arcs (every version, so a player
//! keeps the version they started) and each player's play-through; it reads world facts,
//! quest state, lore and AI text from world-state, quest-system, knowledge-base and
//! ai-integration over NATS, through the small [`Sources`] trait (unit tests substitute
//! it).
//!
//! Advance is an idempotent write guarded by where the player is (`from_node_id`): a
//! stale client gets Conflict, a retried key the first reply. Narrate streams a header
//! (the documents it grounded on), text pieces and a footer (the choices offered now). The
//! prompt's instructions are the studio's (`Node.prompt` and the narrator rules below);
//! the player's name and the lore travel in the user message as JSON data. When
//! ai-integration answers with its offline provider, the stream is the node's template
//! filled with the facts instead of the provider's echo; so it is when ai-integration
//! fails before the first piece of text (the header's `fallback_reason` names its error
//! code). A failure after text was streamed ends the stream with that error.
//!
//! Tables (arc, node and choice ids are `[a-z0-9_.-]`; player ids have no control
//! characters):
//! - `story_teller.arcs`: arc_id → [`Arc`], the latest definition.
//! - `story_teller.versions`: arc_id `\0` version (big-endian) → [`Arc`].
//! - `story_teller.plays`: player_id `\0` arc_id → [`PlayerArc`], the current play-through.
//! - `story_teller.idempotency`: replies of Advance for their idempotency keys.

pub mod graph;
pub mod import;
mod narrate;
mod sources;

pub use narrate::render;
pub use sources::{Gen, Lore, OverNats, Sources};

use std::collections::HashMap;
use std::sync::Arc as Shared;

use aicore_proto::aicore::story_teller::v1::{
    AdvanceRequest, AdvanceResponse, Arc, ArcState, Choice, DefineArcRequest, DefineArcResponse,
    GetArcRequest, GetArcResponse, NarrateRequest, NarrateResponse, NarrationFooter,
    NarrationHeader, Node, PlayerArc, QuestStatus, StartArcRequest, StartArcResponse, Step,
    StoryTellerHandler, choice_condition, narrate_response,
};
use aicore_proto::aicore::world_state::v1::Fact;
use aicore_proto::{CallOptions, Code, Metadata, Request, Status, Streaming};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::template::Segment;
use aicore_runtime::{Ctx, validate};

const ARCS: &str = "story_teller.arcs";
const VERSIONS: &str = "story_teller.versions";
const PLAYS: &str = "story_teller.plays";
/// Replies of Advance kept for replays of their idempotency keys.
const IDEMPOTENCY: Idempotency = Idempotency::new("story_teller.idempotency");

/// Configuration of story-teller (`[domains.story_teller]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoryTellerConfig {
    /// Most nodes of one arc.
    pub max_nodes: usize,
    /// Knowledge-base documents one narration is grounded on.
    pub max_facts: usize,
    /// Characters of each document's body given to the narration.
    pub fact_chars: usize,
    /// Narration tokens when the request asks for none.
    pub default_max_tokens: u32,
    /// Most narration tokens a request may ask for.
    pub max_tokens: u32,
    /// Arc files defined at start-up, each one `Arc` in proto3 JSON (what DefineArc takes
    /// as `arc`); an arc equal to its latest version is left alone. A file that cannot be
    /// read or whose arc is refused stops the start, naming the file and the field.
    pub arc_files: Vec<std::path::PathBuf>,
}

impl Default for StoryTellerConfig {
    fn default() -> Self {
        StoryTellerConfig {
            max_nodes: 1000,
            max_facts: 3,
            fact_chars: 600,
            default_max_tokens: 400,
            max_tokens: 2000,
            arc_files: Vec::new(),
        }
    }
}

/// The story-teller domain.
pub struct StoryTeller {
    ctx: Ctx,
    config: StoryTellerConfig,
    sources: Shared<dyn Sources>,
}

impl aicore_runtime::Domain for StoryTeller {
    type Config = StoryTellerConfig;

    fn build(
        ctx: &Ctx,
        config: &StoryTellerConfig,
    ) -> Result<Shared<dyn aicore_proto::Dispatch>, Status> {
        let sources = Shared::new(OverNats::new(ctx.clone()));
        let arcs = import::load(&config.arc_files, config.max_nodes)?;
        let domain = Shared::new(StoryTeller::new(ctx.clone(), config.clone(), sources));
        if !arcs.is_empty() {
            tokio::runtime::Handle::try_current().map_err(|_| {
                Status::internal("story-teller needs a tokio runtime to import its arc files")
            })?;
            let importer = domain.clone();
            ctx.spawn(async move {
                match importer.import(arcs).await {
                    Ok(n) => tracing::info!(defined = n, "story-teller imported its arc files"),
                    Err(e) => {
                        tracing::error!(error = %e, "story-teller could not store its arc files")
                    }
                }
            });
        }
        Ok(Shared::new(
            aicore_proto::aicore::story_teller::v1::StoryTellerServer(domain),
        ))
    }
}

fn pair(a: &str, b: &str) -> Vec<u8> {
    [a.as_bytes(), b"\0", b.as_bytes()].concat()
}

fn version_key(arc: &str, version: u64) -> Vec<u8> {
    [arc.as_bytes(), b"\0", &version.to_be_bytes()].concat()
}

fn node<'a>(arc: &'a Arc, id: &str) -> Option<&'a Node> {
    arc.nodes.iter().find(|n| n.node_id == id)
}

/// Calls on the domain's own authority (a player may not read world facts directly).
fn own_authority(meta: &Metadata) -> CallOptions {
    CallOptions {
        caller: None,
        ..CallOptions::from_meta(meta)
    }
}

impl StoryTeller {
    /// The domain on a context, reading other domains through `sources`.
    pub fn new(ctx: Ctx, config: StoryTellerConfig, sources: Shared<dyn Sources>) -> Self {
        StoryTeller {
            ctx,
            config,
            sources,
        }
    }

    fn arc_version(&self, arc_id: &str, version: u64) -> Result<Arc, Status> {
        self.ctx
            .store
            .get_msg_cached::<Arc>(VERSIONS, &version_key(arc_id, version))?
            .ok_or_else(|| Status::internal(format!("arc `{arc_id}` version {version} is missing")))
    }

    fn play(&self, player: &str, arc_id: &str) -> Result<PlayerArc, Status> {
        self.ctx
            .store
            .get_msg::<PlayerArc>(PLAYS, &pair(player, arc_id))?
            .ok_or_else(|| {
                Status::with_field(
                    Code::NotFound,
                    "arc_id",
                    format!("the player has not started arc `{arc_id}`"),
                )
            })
    }

    /// The choices of `node` whose conditions hold for `player` now, in order.
    async fn offered(
        &self,
        player: &str,
        node: &Node,
        options: &CallOptions,
    ) -> Result<Vec<Choice>, Status> {
        let mut facts: HashMap<String, Option<Fact>> = HashMap::new();
        let mut quests: HashMap<String, QuestStatus> = HashMap::new();
        let mut out = Vec::new();
        for c in &node.choices {
            let mut ok = true;
            for cond in &c.conditions {
                ok = match &cond.condition {
                    Some(choice_condition::Condition::Fact(fc)) => {
                        if !facts.contains_key(&fc.key) {
                            let f = self.sources.fact(fc.key.clone(), options.clone()).await?;
                            facts.insert(fc.key.clone(), f);
                        }
                        let fact = facts.get(&fc.key).and_then(Option::as_ref);
                        aicore_runtime::facts::holds(fc.op, fc.value.as_ref(), fact)
                    }
                    Some(choice_condition::Condition::Quest(q)) => {
                        if !quests.contains_key(&q.quest_id) {
                            let s = self
                                .sources
                                .quest(player.to_string(), q.quest_id.clone(), options.clone())
                                .await?;
                            quests.insert(q.quest_id.clone(), s);
                        }
                        quests.get(&q.quest_id).map(|s| *s as i32) == Some(q.status)
                    }
                    None => false,
                };
                if !ok {
                    break;
                }
            }
            if ok {
                out.push(c.clone());
            }
        }
        Ok(out)
    }

    /// The play-through with `offered_choice_ids` filled for its current node.
    async fn with_offered(
        &self,
        mut p: PlayerArc,
        options: &CallOptions,
    ) -> Result<PlayerArc, Status> {
        p.offered_choice_ids = match (&p.current_node, ArcState::try_from(p.state)) {
            (Some(n), Ok(ArcState::Active)) => self
                .offered(&p.player_id, n, options)
                .await?
                .into_iter()
                .map(|c| c.choice_id)
                .collect(),
            _ => Vec::new(),
        };
        Ok(p)
    }

    fn check_player(meta: &Metadata, player: &str) -> Result<(), Status> {
        validate::player_id(player, "player_id")?;
        meta.authorize_owner(player, &["service", "admin"])
    }

    /// The fields of an Advance request, and the caller's right to the play-through.
    fn check_advance(meta: &Metadata, req: &AdvanceRequest) -> Result<(), Status> {
        Self::check_player(meta, &req.player_id)?;
        validate::slug(&req.arc_id, "arc_id", 64)?;
        validate::slug(&req.from_node_id, "from_node_id", 64)?;
        validate::slug(&req.choice_id, "choice_id", 64)?;
        if req.idempotency_key.is_empty() {
            return Err(Status::invalid("idempotency_key", "is required"));
        }
        Ok(())
    }

    /// The node the request's choice of `current` leads to in `arc`: InvalidArgument when
    /// `current` has no such choice, FailedPrecondition when it is not offered now.
    async fn chosen_target(
        &self,
        req: &AdvanceRequest,
        current: &Node,
        arc: &Arc,
        options: &CallOptions,
    ) -> Result<Option<Node>, Status> {
        let choice = current
            .choices
            .iter()
            .find(|c| c.choice_id == req.choice_id)
            .ok_or_else(|| {
                Status::invalid(
                    "choice_id",
                    format!(
                        "node `{}` has no choice `{}`",
                        current.node_id, req.choice_id
                    ),
                )
            })?;
        let offered = self.offered(&req.player_id, current, options).await?;
        if !offered.iter().any(|c| c.choice_id == req.choice_id) {
            return Err(Status::with_field(
                Code::FailedPrecondition,
                "choice_id",
                format!(
                    "choice `{}` is not offered now: its conditions do not hold",
                    req.choice_id
                ),
            ));
        }
        Ok(node(arc, &choice.target_node_id).cloned())
    }
}

impl StoryTellerHandler for StoryTeller {
    async fn define_arc(
        &self,
        request: Request<DefineArcRequest>,
    ) -> Result<DefineArcResponse, Status> {
        let req = request.body;
        let mut arc = req
            .arc
            .ok_or_else(|| Status::invalid("arc", "is required"))?;
        graph::check(&arc, self.config.max_nodes)?;
        let now = self.ctx.now_ts();
        let expected = req.expected_version;
        self.ctx
            .store
            .write(move |tx| {
                let live = tx
                    .get_msg::<Arc>(ARCS, arc.arc_id.as_bytes())?
                    .map(|a| a.version);
                let what = format!("arc `{}`", arc.arc_id);
                validate::expected_version(expected, live.unwrap_or(0), &what)?;
                arc.version = live.unwrap_or(0) + 1;
                arc.updated_at = Some(now);
                tx.put_msg(ARCS, arc.arc_id.as_bytes(), &arc);
                tx.put_msg(VERSIONS, &version_key(&arc.arc_id, arc.version), &arc);
                Ok(DefineArcResponse { arc: Some(arc) })
            })
            .await
    }

    async fn start_arc(
        &self,
        request: Request<StartArcRequest>,
    ) -> Result<StartArcResponse, Status> {
        let Request { body: req, meta } = request;
        Self::check_player(&meta, &req.player_id)?;
        validate::slug(&req.arc_id, "arc_id", 64)?;
        let arc = self
            .ctx
            .store
            .get_msg_cached::<Arc>(ARCS, req.arc_id.as_bytes())?
            .ok_or_else(|| {
                Status::with_field(Code::NotFound, "arc_id", format!("no arc `{}`", req.arc_id))
            })?;
        let now = self.ctx.now_ts();
        let player = req.player_id.clone();
        let p = self
            .ctx
            .store
            .write(move |tx| {
                let key = pair(&player, &arc.arc_id);
                let old = tx.get_msg::<PlayerArc>(PLAYS, &key)?;
                if let Some(p) = &old
                    && p.state == ArcState::Active as i32
                {
                    return Ok(p.clone());
                }
                let p = PlayerArc {
                    player_id: player,
                    arc_id: arc.arc_id.clone(),
                    arc_version: arc.version,
                    state: ArcState::Active as i32,
                    current_node: node(&arc, &arc.start_node_id).cloned(),
                    path: Vec::new(),
                    play_through: old.map_or(1, |o| o.play_through + 1),
                    started_at: Some(now),
                    updated_at: Some(now),
                    offered_choice_ids: Vec::new(),
                };
                tx.put_msg(PLAYS, &key, &p);
                Ok(p)
            })
            .await?;
        Ok(StartArcResponse {
            player_arc: Some(self.with_offered(p, &own_authority(&meta)).await?),
        })
    }

    async fn advance(&self, request: Request<AdvanceRequest>) -> Result<AdvanceResponse, Status> {
        let Request { body: req, meta } = request;
        Self::check_advance(&meta, &req)?;
        let scope = String::from_utf8_lossy(&pair(&req.player_id, &req.arc_id)).into_owned();
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "advance", &scope, &req)?;
        let options = own_authority(&meta);
        let p = self.play(&req.player_id, &req.arc_id)?;
        let arc = self.arc_version(&req.arc_id, p.arc_version)?;
        // Checked here for a clear refusal, and again in the write against a race.
        let current = p.current_node.clone().unwrap_or_default();
        let fresh = p.state == ArcState::Active as i32 && current.node_id == req.from_node_id;
        let mut target = None;
        if fresh {
            target = self.chosen_target(&req, &current, &arc, &options).await?;
        }
        let now = self.ctx.now_ts();
        let (player, arc_id, from, choice_id, started) = (
            req.player_id.clone(),
            req.arc_id.clone(),
            req.from_node_id.clone(),
            req.choice_id.clone(),
            p.started_at,
        );
        let reply = keyed
            .write(move |tx| {
                let key = pair(&player, &arc_id);
                let mut p = tx
                    .get_msg::<PlayerArc>(PLAYS, &key)?
                    .ok_or_else(|| Status::not_found("the play-through is gone"))?;
                let at = p
                    .current_node
                    .as_ref()
                    .map(|n| n.node_id.clone())
                    .unwrap_or_default();
                let (Some(target), true) = (
                    target,
                    p.state == ArcState::Active as i32 && at == from && p.started_at == started,
                ) else {
                    return Err(Status::with_field(
                        Code::Conflict,
                        "from_node_id",
                        format!("the player is at `{at}`, not `{from}`"),
                    ));
                };
                p.path.push(Step {
                    node_id: from,
                    choice_id,
                    chosen_at: Some(now),
                });
                if target.choices.is_empty() {
                    p.state = ArcState::Finished as i32;
                }
                p.current_node = Some(target);
                p.updated_at = Some(now);
                tx.put_msg(PLAYS, &key, &p);
                Ok(AdvanceResponse {
                    player_arc: Some(p),
                })
            })
            .await?;
        let p = reply.player_arc.unwrap_or_default();
        Ok(AdvanceResponse {
            player_arc: Some(self.with_offered(p, &options).await?),
        })
    }

    async fn get_arc(&self, request: Request<GetArcRequest>) -> Result<GetArcResponse, Status> {
        let Request { body: req, meta } = request;
        Self::check_player(&meta, &req.player_id)?;
        validate::slug(&req.arc_id, "arc_id", 64)?;
        let p = self.play(&req.player_id, &req.arc_id)?;
        Ok(GetArcResponse {
            player_arc: Some(self.with_offered(p, &own_authority(&meta)).await?),
        })
    }

    async fn narrate(
        &self,
        request: Request<NarrateRequest>,
    ) -> Result<Streaming<NarrateResponse>, Status> {
        let Request { body, meta } = request;
        self.narrate_request(body, meta).await
    }
}

#[cfg(test)]
mod tests;
