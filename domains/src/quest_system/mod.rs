//! quest-system: quest definitions (prerequisites, objectives, rewards) and per-player
//! quest logs moving available → active → completed | abandoned. It owns the definitions
//! and the logs; it reads world facts from world-state and grants rewards through
//! payment, both over NATS (through the two small traits [`WorldFacts`] and
//! [`RewardSink`], so unit tests substitute them). It does not track objectives by itself:
//! the game server reports progress.
//!
//! Tables (quest ids are `[a-z0-9_.-]`, player ids have no control characters, so `\0`
//! separates key parts):
//! - `quest_system.quests`: quest_id → [`Quest`], the latest definition.
//! - `quest_system.versions`: quest_id `\0` version (big-endian) → [`Quest`], every
//!   definition version (players keep the version they accepted).
//! - `quest_system.log`: player_id `\0` quest_id → [`Entry`] (the [`PlayerQuest`] plus
//!   the in-progress completion and its reward transactions).
//! - `quest_system.recent`: player_id `\0` !updated_ms `\0` quest_id → empty, so GetLog
//!   lists most recently updated first with one scan (`!x` = `u64::MAX - x`).
//! - `quest_system.idempotency`: replies of Progress for their idempotency keys.
//!
//! Complete is retry-safe end to end in two writes around the payment calls: first the
//! entry is marked `completing` (objectives checked; Progress and Abandon are refused from
//! then on), then every reward is credited with the idempotency key
//! `quest:<player>:<quest>:<currency>` (`:<n>` appended for the n-th completion, n ≥ 2, of
//! a repeatable quest; hashed when longer than 128 characters), then the completion is
//! recorded with its transaction ids and `evt.quest.completed` in one transaction. A
//! failure anywhere leaves the entry `completing`, and the next Complete resumes: payment
//! answers the same transaction for the same key, and the recording write is a no-op if
//! it already happened. The one window left: a credit that succeeded but whose recording
//! never happened is paid again only if Complete is retried after payment forgot the key
//! (≥ 24 h).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use aicore_proto::aicore::quest_system::v1::{
    AbandonRequest, AbandonResponse, AcceptRequest, AcceptResponse, CompleteRequest,
    CompleteResponse, DefineQuestRequest, DefineQuestResponse, GetLogRequest, GetLogResponse,
    GetQuestRequest, GetQuestResponse, ListAvailableRequest, ListAvailableResponse,
    ObjectiveProgress, PlayerQuest, ProgressRequest, ProgressResponse, Quest, QuestCompleted,
    QuestState, QuestSystemHandler,
};
use aicore_proto::aicore::world_state::v1::Fact;
use aicore_proto::{CallOptions, Code, Metadata, Request, Status};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::outbox::Emit;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, validate};

const QUESTS: &str = "quest_system.quests";
const VERSIONS: &str = "quest_system.versions";
const LOG: &str = "quest_system.log";
const RECENT: &str = "quest_system.recent";
/// Replies of Progress kept for replays of their idempotency keys.
const IDEMPOTENCY: Idempotency = Idempotency::new("quest_system.idempotency");

/// The subject a completion is published on (payload: [`QuestCompleted`]).
pub const COMPLETED_SUBJECT: &str = "evt.quest.completed";

const MAX_QUEST_ID_CHARS: usize = 64;
/// Longest idempotency key payment accepts.
const MAX_CREDIT_KEY_CHARS: usize = 128;
const LIST_TOKEN: u8 = b'Q';
const LOG_TOKEN: u8 = b'G';

/// Configuration of quest-system (`[domains.quest_system]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuestSystemConfig {
    /// Page size of ListAvailable and GetLog when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of ListAvailable and GetLog; larger requests are capped to it.
    pub max_page_size: u32,
    /// Most rows one ListAvailable or GetLog call examines; a call that reaches it returns
    /// a shorter page with a token to go on, so one call's work stays bounded.
    pub max_scan: usize,
    /// Most objectives of one quest.
    pub max_objectives: usize,
    /// Most rewards of one quest.
    pub max_rewards: usize,
    /// Most prerequisites (quests and facts together) of one quest.
    pub max_prerequisites: usize,
    /// Longest title, in characters.
    pub max_title_chars: usize,
    /// Longest description (of a quest or an objective), in characters.
    pub max_description_chars: usize,
}

impl Default for QuestSystemConfig {
    fn default() -> Self {
        QuestSystemConfig {
            default_page_size: 50,
            max_page_size: 200,
            max_scan: 1000,
            max_objectives: 32,
            max_rewards: 16,
            max_prerequisites: 32,
            max_title_chars: 200,
            max_description_chars: 4000,
        }
    }
}

/// One player's entry on one quest (value of `quest_system.log`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// What clients see.
    #[prost(message, optional, tag = "1")]
    pub quest: Option<PlayerQuest>,
    /// A Complete started (objectives met, rewards being granted) and has not been
    /// recorded yet; only Complete may touch the entry.
    #[prost(bool, tag = "2")]
    pub completing: bool,
    /// Reward transactions of the latest completion (the reply a repeated Complete gets).
    #[prost(string, repeated, tag = "3")]
    pub reward_transaction_ids: Vec<String>,
    /// The entry's key in `quest_system.recent`.
    #[prost(bytes = "vec", tag = "4")]
    pub recent_key: Vec<u8>,
}

/// One reward credit, as sent to payment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// Who is paid.
    pub player_id: String,
    /// In which currency.
    pub currency: String,
    /// How much (> 0).
    pub amount: i64,
    /// For the ledger.
    pub reason: String,
    /// Makes the credit exactly-once.
    pub idempotency_key: String,
}

/// Where rewards go: payment over NATS in production, a recorder in tests.
pub trait RewardSink: Send + Sync + 'static {
    /// Credits one grant and returns its payment transaction id. Must be idempotent by
    /// `grant.idempotency_key` (the same key returns the first transaction).
    fn credit(&self, grant: Grant, options: CallOptions) -> BoxFuture<'_, Result<String, Status>>;
}

/// Where prerequisite facts come from: world-state over NATS in production.
pub trait WorldFacts: Send + Sync + 'static {
    /// The live fact under `key`, or `None` when there is none.
    fn get(&self, key: String, options: CallOptions)
    -> BoxFuture<'_, Result<Option<Fact>, Status>>;
}

/// The production dependencies: payment and world-state through the SDK client.
pub struct OverNats {
    ctx: Ctx,
}

impl RewardSink for OverNats {
    fn credit(&self, grant: Grant, options: CallOptions) -> BoxFuture<'_, Result<String, Status>> {
        use aicore_proto::aicore::payment::v1::{CreditRequest, PaymentClient};
        Box::pin(async move {
            let client = PaymentClient::new(self.ctx.client()?.clone());
            let r = client
                .credit(
                    CreditRequest {
                        player_id: grant.player_id,
                        currency: grant.currency,
                        amount: grant.amount,
                        reason: grant.reason,
                        idempotency_key: grant.idempotency_key,
                    },
                    &options,
                )
                .await?;
            Ok(r.transaction.map(|t| t.transaction_id).unwrap_or_default())
        })
    }
}

impl WorldFacts for OverNats {
    fn get(
        &self,
        key: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Option<Fact>, Status>> {
        use aicore_proto::aicore::world_state::v1::{GetRequest, WorldStateClient};
        Box::pin(async move {
            let client = WorldStateClient::new(self.ctx.client()?.clone());
            match client.get(GetRequest { key }, &options).await {
                Ok(r) => Ok(r.fact),
                Err(e) if e.code == Code::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}

/// The quest-system domain.
pub struct QuestSystem {
    ctx: Ctx,
    config: QuestSystemConfig,
    rewards: Arc<dyn RewardSink>,
    facts: Arc<dyn WorldFacts>,
}

impl aicore_runtime::Domain for QuestSystem {
    type Config = QuestSystemConfig;

    fn build(
        ctx: &Ctx,
        config: &QuestSystemConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(Arc::new(
            aicore_proto::aicore::quest_system::v1::QuestSystemServer(Arc::new(QuestSystem::new(
                ctx.clone(),
                config.clone(),
            ))),
        ))
    }
}

/// Options for calls the domain makes on its own authority: the caller's deadline and
/// trace, but not the caller (a player may not call payment.Credit; quest-system may).
fn own_authority(meta: &Metadata) -> CallOptions {
    CallOptions {
        caller: None,
        ..CallOptions::from_meta(meta)
    }
}

fn state_name(state: i32) -> &'static str {
    QuestState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("QUEST_STATE_UNSPECIFIED")
}

/// FailedPrecondition for an action the entry's state does not allow.
fn illegal(action: &str, state: &str) -> Status {
    Status::new(
        Code::FailedPrecondition,
        format!("cannot {action} a quest in state {state}"),
    )
}

fn log_key(player: &str, quest: &str) -> Vec<u8> {
    [player.as_bytes(), b"\0", quest.as_bytes()].concat()
}

fn version_key(quest: &str, version: u64) -> Vec<u8> {
    [quest.as_bytes(), b"\0", &version.to_be_bytes()].concat()
}

fn player_prefix(player: &str) -> Vec<u8> {
    [player.as_bytes(), b"\0"].concat()
}

fn millis(ts: &prost_types::Timestamp) -> u64 {
    std::time::SystemTime::try_from(*ts)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// The payment idempotency key of one reward of the `n`-th completion.
pub fn reward_key(player: &str, quest: &str, currency: &str, n: u32) -> String {
    let mut key = format!("quest:{player}:{quest}:{currency}");
    if n >= 2 {
        key.push_str(&format!(":{n}"));
    }
    if key.chars().count() > MAX_CREDIT_KEY_CHARS {
        let digest = Sha256::digest(key.as_bytes());
        key = format!(
            "quest:{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
    key
}

/// Writes `entry` under its log key and moves its row in the recency index.
fn save_entry(tx: &mut Tx<'_>, entry: &mut Entry) -> Result<(), Status> {
    let pq = entry
        .quest
        .as_ref()
        .ok_or_else(|| Status::internal("quest log entry without its quest"))?;
    let updated = pq.updated_at.as_ref().map_or(0, millis);
    let recent = [
        player_prefix(&pq.player_id).as_slice(),
        &(u64::MAX - updated).to_be_bytes(),
        b"\0",
        pq.quest_id.as_bytes(),
    ]
    .concat();
    let key = log_key(&pq.player_id, &pq.quest_id);
    if !entry.recent_key.is_empty() && entry.recent_key != recent {
        tx.delete(RECENT, &entry.recent_key);
    }
    tx.put(RECENT, &recent, Vec::new());
    entry.recent_key = recent;
    tx.put_msg(LOG, &key, entry);
    Ok(())
}

/// Bumps the entry's version and update time.
fn touch(pq: &mut PlayerQuest, now: prost_types::Timestamp) {
    pq.version += 1;
    pq.updated_at = Some(now);
}

fn all_done(pq: &PlayerQuest) -> bool {
    pq.objectives.iter().all(|o| o.done)
}

impl QuestSystem {
    /// The domain on a context, talking to payment and world-state over NATS.
    pub fn new(ctx: Ctx, config: QuestSystemConfig) -> Self {
        let deps = Arc::new(OverNats { ctx: ctx.clone() });
        QuestSystem {
            ctx,
            config,
            rewards: deps.clone(),
            facts: deps,
        }
    }

    /// The domain with other dependencies (tests).
    pub fn with_dependencies(
        ctx: Ctx,
        config: QuestSystemConfig,
        rewards: Arc<dyn RewardSink>,
        facts: Arc<dyn WorldFacts>,
    ) -> Self {
        QuestSystem {
            ctx,
            config,
            rewards,
            facts,
        }
    }

    fn config(&self) -> &QuestSystemConfig {
        &self.config
    }

    fn page_size(&self, requested: i32) -> Result<usize, Status> {
        let c = self.config();
        paging::page_size(requested, c.default_page_size, c.max_page_size)
    }

    fn validate(&self, q: &Quest) -> Result<(), Status> {
        let c = self.config();
        validate::slug(&q.quest_id, "quest.quest_id", MAX_QUEST_ID_CHARS)?;
        if q.title.chars().count() > c.max_title_chars {
            return Err(Status::invalid(
                "quest.title",
                format!("must be at most {} characters", c.max_title_chars),
            ));
        }
        if q.description.chars().count() > c.max_description_chars {
            return Err(Status::invalid(
                "quest.description",
                format!("must be at most {} characters", c.max_description_chars),
            ));
        }
        if q.objectives.is_empty() || q.objectives.len() > c.max_objectives {
            return Err(Status::invalid(
                "quest.objectives",
                format!("must hold 1 to {} objectives", c.max_objectives),
            ));
        }
        let mut ids = HashSet::new();
        for (i, o) in q.objectives.iter().enumerate() {
            let field = format!("quest.objectives[{i}]");
            validate::slug(
                &o.objective_id,
                &format!("{field}.objective_id"),
                MAX_QUEST_ID_CHARS,
            )?;
            if !ids.insert(o.objective_id.as_str()) {
                return Err(Status::invalid(
                    &format!("{field}.objective_id"),
                    "is not unique within the quest",
                ));
            }
            if o.target < 1 {
                return Err(Status::invalid(
                    &format!("{field}.target"),
                    "must be at least 1",
                ));
            }
            if o.description.chars().count() > c.max_description_chars {
                return Err(Status::invalid(
                    &format!("{field}.description"),
                    format!("must be at most {} characters", c.max_description_chars),
                ));
            }
        }
        if q.rewards.len() > c.max_rewards {
            return Err(Status::invalid(
                "quest.rewards",
                format!("must hold at most {} rewards", c.max_rewards),
            ));
        }
        let mut currencies = HashSet::new();
        for (i, r) in q.rewards.iter().enumerate() {
            let field = format!("quest.rewards[{i}]");
            // Payment's currency codes, checked here so a bad one fails at definition
            // rather than at every Complete.
            let cur_ok = !r.currency.is_empty()
                && r.currency.len() <= 16
                && r.currency
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !cur_ok {
                return Err(Status::invalid(
                    &format!("{field}.currency"),
                    "must be 1 to 16 characters of A-Z, 0-9 and _ (e.g. GOLD)",
                ));
            }
            if !currencies.insert(r.currency.as_str()) {
                return Err(Status::invalid(
                    &format!("{field}.currency"),
                    "appears twice; give one reward per currency",
                ));
            }
            if r.amount <= 0 {
                return Err(Status::invalid(
                    &format!("{field}.amount"),
                    "must be greater than 0",
                ));
            }
        }
        let pre = q.prerequisites.clone().unwrap_or_default();
        if pre.completed_quest_ids.len() + pre.facts.len() > c.max_prerequisites {
            return Err(Status::invalid(
                "quest.prerequisites",
                format!("must hold at most {} conditions", c.max_prerequisites),
            ));
        }
        for (i, id) in pre.completed_quest_ids.iter().enumerate() {
            let field = format!("quest.prerequisites.completed_quest_ids[{i}]");
            validate::slug(id, &field, MAX_QUEST_ID_CHARS)?;
            if *id == q.quest_id {
                return Err(Status::invalid(&field, "a quest cannot require itself"));
            }
        }
        for (i, f) in pre.facts.iter().enumerate() {
            let field = format!("quest.prerequisites.facts[{i}]");
            aicore_runtime::facts::check_condition(&field, &f.key, f.op, f.value.as_ref())?;
        }
        Ok(())
    }

    /// The latest definition of a quest, or NotFound naming `quest_id`.
    fn latest(&self, quest_id: &str) -> Result<Quest, Status> {
        self.ctx
            .store
            .get_msg_cached::<Quest>(QUESTS, quest_id.as_bytes())?
            .ok_or_else(|| {
                Status::with_field(Code::NotFound, "quest_id", format!("no quest `{quest_id}`"))
            })
    }

    fn entry(&self, player: &str, quest: &str) -> Result<Option<Entry>, Status> {
        self.ctx
            .store
            .get_msg::<Entry>(LOG, &log_key(player, quest))
    }

    /// Why `player` may not accept `quest` now (`None`: prerequisites met). Facts are read
    /// through `cache`, so one ListAvailable reads each fact once.
    async fn unmet(
        &self,
        player: &str,
        quest: &Quest,
        cache: &mut HashMap<String, Option<Fact>>,
        options: &CallOptions,
    ) -> Result<Option<String>, Status> {
        let Some(pre) = &quest.prerequisites else {
            return Ok(None);
        };
        for id in &pre.completed_quest_ids {
            let done = self
                .entry(player, id)?
                .and_then(|e| e.quest)
                .is_some_and(|pq| pq.completions >= 1);
            if !done {
                return Ok(Some(format!("quest `{id}` must be completed first")));
            }
        }
        for c in &pre.facts {
            if !cache.contains_key(&c.key) {
                let fact = self.facts.get(c.key.clone(), options.clone()).await?;
                cache.insert(c.key.clone(), fact);
            }
            let fact = cache.get(&c.key).and_then(Option::as_ref);
            if !aicore_runtime::facts::holds(c.op, c.value.as_ref(), fact) {
                return Ok(Some(format!("the world fact `{}` does not qualify", c.key)));
            }
        }
        Ok(None)
    }
}

/// Whether an entry allows a new Accept: `Ok(true)` to (re)start, `Ok(false)` when it is
/// already active (answered unchanged), an error for a completed non-repeatable quest.
fn may_accept(entry: Option<&Entry>, repeatable: bool) -> Result<bool, Status> {
    let Some(e) = entry else { return Ok(true) };
    let state = e.quest.as_ref().map_or(0, |q| q.state);
    if e.completing || state == QuestState::Active as i32 {
        return Ok(false);
    }
    if state == QuestState::Completed as i32 && !repeatable {
        return Err(illegal("accept again", state_name(state)));
    }
    Ok(true)
}

impl QuestSystemHandler for QuestSystem {
    async fn define_quest(
        &self,
        request: Request<DefineQuestRequest>,
    ) -> Result<DefineQuestResponse, Status> {
        let req = request.body;
        let mut quest = req
            .quest
            .ok_or_else(|| Status::invalid("quest", "is required"))?;
        self.validate(&quest)?;
        let expected = req.expected_version;
        let now = self.ctx.now_ts();
        self.ctx
            .store
            .write(move |tx| {
                let id = quest.quest_id.clone();
                let live = tx.get_msg::<Quest>(QUESTS, id.as_bytes())?;
                let current = live.as_ref().map(|q| q.version);
                match (expected, current) {
                    (None, _) | (Some(0), None) => {}
                    (Some(n), Some(v)) if n == v => {}
                    (Some(n), v) => {
                        return Err(Status::conflict(format!(
                            "the quest is at version {}, not the expected {n}",
                            v.unwrap_or(0)
                        )));
                    }
                }
                quest.version = current.unwrap_or(0) + 1;
                quest.updated_at = Some(now);
                tx.put_msg(QUESTS, id.as_bytes(), &quest);
                tx.put_msg(VERSIONS, &version_key(&id, quest.version), &quest);
                Ok(DefineQuestResponse { quest: Some(quest) })
            })
            .await
    }

    async fn get_quest(
        &self,
        request: Request<GetQuestRequest>,
    ) -> Result<GetQuestResponse, Status> {
        let req = request.body;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        let quest = if req.version == 0 {
            self.latest(&req.quest_id)?
        } else {
            self.ctx
                .store
                .get_msg_cached::<Quest>(VERSIONS, &version_key(&req.quest_id, req.version))?
                .ok_or_else(|| {
                    Status::with_field(
                        Code::NotFound,
                        "version",
                        format!("quest `{}` has no version {}", req.quest_id, req.version),
                    )
                })?
        };
        Ok(GetQuestResponse { quest: Some(quest) })
    }

    async fn list_available(
        &self,
        request: Request<ListAvailableRequest>,
    ) -> Result<ListAvailableResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let limit = self.page_size(req.page_size)?;
        let options = own_authority(&meta);
        let mut cache = HashMap::new();
        let listing = paging::Listing {
            store: &self.ctx.store,
            table: QUESTS,
            prefix: b"",
            kind: LIST_TOKEN,
            limit,
            max_scan: self.config().max_scan.max(limit),
        };
        let mut page = paging::Page::start(listing, &req.page_token)?;
        while let Some((_, v)) = page.next_row()? {
            let quest: Quest = aicore_runtime::store::decode(QUESTS, v)?;
            let entry = self.entry(&req.player_id, &quest.quest_id)?;
            if !matches!(may_accept(entry.as_ref(), quest.repeatable), Ok(true)) {
                continue;
            }
            let unmet = self
                .unmet(&req.player_id, &quest, &mut cache, &options)
                .await?;
            if unmet.is_none() {
                page.keep(quest);
            }
        }
        let (quests, next_page_token) = page.finish();
        Ok(ListAvailableResponse {
            quests,
            next_page_token,
        })
    }

    async fn accept(&self, request: Request<AcceptRequest>) -> Result<AcceptResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let quest = self.latest(&req.quest_id)?;
        let entry = self.entry(&req.player_id, &req.quest_id)?;
        if !may_accept(entry.as_ref(), quest.repeatable)? {
            return Ok(AcceptResponse {
                player_quest: entry.and_then(|e| e.quest),
            });
        }
        let options = own_authority(&meta);
        if let Some(why) = self
            .unmet(&req.player_id, &quest, &mut HashMap::new(), &options)
            .await?
        {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!("prerequisites not met: {why}"),
            ));
        }
        let now = self.ctx.now_ts();
        let (player, quest_id) = (req.player_id, req.quest_id);
        self.ctx
            .store
            .write(move |tx| {
                let key = log_key(&player, &quest_id);
                let entry = tx.get_msg::<Entry>(LOG, &key)?;
                if !may_accept(entry.as_ref(), quest.repeatable)? {
                    return Ok(AcceptResponse {
                        player_quest: entry.and_then(|e| e.quest),
                    });
                }
                let mut entry = entry.unwrap_or_default();
                let old = entry.quest.take().unwrap_or_default();
                let mut pq = PlayerQuest {
                    player_id: player.clone(),
                    quest_id: quest_id.clone(),
                    quest_version: quest.version,
                    state: QuestState::Active as i32,
                    objectives: quest
                        .objectives
                        .iter()
                        .map(|o| ObjectiveProgress {
                            objective_id: o.objective_id.clone(),
                            current: 0,
                            target: o.target,
                            done: false,
                        })
                        .collect(),
                    completions: old.completions,
                    accepted_at: Some(now),
                    completed_at: old.completed_at,
                    updated_at: None,
                    version: old.version,
                };
                touch(&mut pq, now);
                entry.quest = Some(pq.clone());
                entry.completing = false;
                save_entry(tx, &mut entry)?;
                Ok(AcceptResponse {
                    player_quest: Some(pq),
                })
            })
            .await
    }

    async fn progress(
        &self,
        request: Request<ProgressRequest>,
    ) -> Result<ProgressResponse, Status> {
        let req = request.body;
        validate::player_id(&req.player_id, "player_id")?;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        validate::slug(&req.objective_id, "objective_id", MAX_QUEST_ID_CHARS)?;
        if req.delta < 1 {
            return Err(Status::invalid("delta", "must be at least 1"));
        }
        if req.idempotency_key.is_empty() {
            return Err(Status::invalid("idempotency_key", "is required"));
        }
        let now = self.ctx.now_ts();
        let scope = format!("{}\0{}", req.player_id, req.quest_id);
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "progress", &scope, &req)?;
        keyed
            .write(move |tx| {
                let mut entry = tx
                    .get_msg::<Entry>(LOG, &log_key(&req.player_id, &req.quest_id))?
                    .ok_or_else(|| illegal("progress", "QUEST_STATE_AVAILABLE"))?;
                let mut pq = entry.quest.clone().unwrap_or_default();
                if pq.state != QuestState::Active as i32 {
                    return Err(illegal("progress", state_name(pq.state)));
                }
                if entry.completing {
                    return Err(illegal("progress", "QUEST_STATE_ACTIVE (being completed)"));
                }
                let before = all_done(&pq);
                let objective = pq
                    .objectives
                    .iter_mut()
                    .find(|o| o.objective_id == req.objective_id)
                    .ok_or_else(|| {
                        Status::invalid("objective_id", "is not an objective of this quest")
                    })?;
                objective.current = objective
                    .current
                    .saturating_add(req.delta)
                    .min(objective.target);
                objective.done = objective.current >= objective.target;
                let all_objectives_done = !before && all_done(&pq);
                touch(&mut pq, now);
                entry.quest = Some(pq.clone());
                save_entry(tx, &mut entry)?;
                Ok(ProgressResponse {
                    player_quest: Some(pq),
                    all_objectives_done,
                })
            })
            .await
    }

    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<CompleteResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let (player, quest_id) = (req.player_id, req.quest_id);
        let key = log_key(&player, &quest_id);
        if self.entry(&player, &quest_id)?.is_none() {
            self.latest(&quest_id)?;
        }
        // 1. Mark the entry completing (or find it already completed: the first result).
        let now = self.ctx.now_ts();
        let k = key.clone();
        let marked = self
            .ctx
            .store
            .write(move |tx| {
                let mut entry = tx
                    .get_msg::<Entry>(LOG, &k)?
                    .ok_or_else(|| illegal("complete", "QUEST_STATE_AVAILABLE"))?;
                let mut pq = entry.quest.clone().unwrap_or_default();
                if pq.state == QuestState::Completed as i32 {
                    return Ok(Err(CompleteResponse {
                        player_quest: Some(pq),
                        reward_transaction_ids: entry.reward_transaction_ids,
                    }));
                }
                if pq.state != QuestState::Active as i32 {
                    return Err(illegal("complete", state_name(pq.state)));
                }
                if !entry.completing {
                    let open: Vec<&str> = pq
                        .objectives
                        .iter()
                        .filter(|o| !o.done)
                        .map(|o| o.objective_id.as_str())
                        .collect();
                    if !open.is_empty() {
                        return Err(Status::new(
                            Code::FailedPrecondition,
                            format!("objectives not done yet: {}", open.join(", ")),
                        ));
                    }
                    entry.completing = true;
                    touch(&mut pq, now);
                    entry.quest = Some(pq.clone());
                    save_entry(tx, &mut entry)?;
                }
                Ok(Ok(pq))
            })
            .await?;
        let pq = match marked {
            Ok(pq) => pq,
            Err(first) => return Ok(first),
        };
        // 2. Grant the rewards of the version the player accepted.
        let quest = self
            .ctx
            .store
            .get_msg_cached::<Quest>(VERSIONS, &version_key(&quest_id, pq.quest_version))?
            .ok_or_else(|| Status::internal("the accepted quest version is missing"))?;
        let n = pq.completions + 1;
        let options = own_authority(&meta);
        let mut reward_transaction_ids = Vec::with_capacity(quest.rewards.len());
        for r in &quest.rewards {
            let grant = Grant {
                player_id: player.clone(),
                currency: r.currency.clone(),
                amount: r.amount,
                reason: format!("quest_reward:{quest_id}"),
                idempotency_key: reward_key(&player, &quest_id, &r.currency, n),
            };
            reward_transaction_ids.push(self.rewards.credit(grant, options.clone()).await?);
        }
        // 3. Record the completion and its event, once.
        let now = self.ctx.now_ts();
        let rewards = quest.rewards;
        self.ctx
            .store
            .write(move |tx| {
                let mut entry = tx
                    .get_msg::<Entry>(LOG, &key)?
                    .ok_or_else(|| Status::internal("the quest log entry vanished"))?;
                let mut pq = entry.quest.clone().unwrap_or_default();
                if !entry.completing {
                    // A concurrent Complete recorded it first.
                    return Ok(CompleteResponse {
                        player_quest: Some(pq),
                        reward_transaction_ids: entry.reward_transaction_ids,
                    });
                }
                pq.state = QuestState::Completed as i32;
                pq.completions = n;
                pq.completed_at = Some(now);
                touch(&mut pq, now);
                entry.completing = false;
                entry.quest = Some(pq.clone());
                entry.reward_transaction_ids = reward_transaction_ids.clone();
                save_entry(tx, &mut entry)?;
                let event = QuestCompleted {
                    player_quest: Some(pq.clone()),
                    rewards,
                    reward_transaction_ids: reward_transaction_ids.clone(),
                };
                tx.emit(&event)?;
                Ok(CompleteResponse {
                    player_quest: Some(pq),
                    reward_transaction_ids,
                })
            })
            .await
    }

    async fn abandon(&self, request: Request<AbandonRequest>) -> Result<AbandonResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        if self.entry(&req.player_id, &req.quest_id)?.is_none() {
            self.latest(&req.quest_id)?;
        }
        let now = self.ctx.now_ts();
        let key = log_key(&req.player_id, &req.quest_id);
        self.ctx
            .store
            .write(move |tx| {
                let mut entry = tx
                    .get_msg::<Entry>(LOG, &key)?
                    .ok_or_else(|| illegal("abandon", "QUEST_STATE_AVAILABLE"))?;
                let mut pq = entry.quest.clone().unwrap_or_default();
                if pq.state == QuestState::Abandoned as i32 {
                    return Ok(AbandonResponse {
                        player_quest: Some(pq),
                    });
                }
                if pq.state != QuestState::Active as i32 {
                    return Err(illegal("abandon", state_name(pq.state)));
                }
                if entry.completing {
                    return Err(illegal("abandon", "QUEST_STATE_ACTIVE (being completed)"));
                }
                pq.state = QuestState::Abandoned as i32;
                touch(&mut pq, now);
                entry.quest = Some(pq.clone());
                save_entry(tx, &mut entry)?;
                Ok(AbandonResponse {
                    player_quest: Some(pq),
                })
            })
            .await
    }

    async fn get_log(&self, request: Request<GetLogRequest>) -> Result<GetLogResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let mut states = HashSet::new();
        for (i, s) in req.states.iter().enumerate() {
            if !matches!(QuestState::try_from(*s), Ok(st) if st != QuestState::Unspecified) {
                return Err(Status::invalid(
                    &format!("states[{i}]"),
                    "must be a known state other than QUEST_STATE_UNSPECIFIED",
                ));
            }
            states.insert(*s);
        }
        let limit = self.page_size(req.page_size)?;
        let prefix = player_prefix(&req.player_id);
        let listing = paging::Listing {
            store: &self.ctx.store,
            table: RECENT,
            prefix: &prefix,
            kind: LOG_TOKEN,
            limit,
            max_scan: self.config().max_scan.max(limit),
        };
        let mut page = paging::Page::start(listing, &req.page_token)?;
        while let Some((k, _)) = page.next_row()? {
            // The recency key ends with `\0` quest_id after the 8-byte time.
            let quest_id = k.get(prefix.len() + 9..).unwrap_or_default();
            let quest_id = String::from_utf8_lossy(quest_id);
            let Some(pq) = self.entry(&req.player_id, &quest_id)?.and_then(|e| e.quest) else {
                continue;
            };
            if states.is_empty() || states.contains(&pq.state) {
                page.keep(pq);
            }
        }
        let (entries, next_page_token) = page.finish();
        Ok(GetLogResponse {
            entries,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests;
