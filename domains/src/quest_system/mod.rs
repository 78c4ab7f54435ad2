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
    QuestState, QuestSystemHandler, Reward,
};
use aicore_proto::aicore::world_state::v1::Fact;
pub use aicore_proto::internal::quest_system::Entry;
use aicore_proto::{CallOptions, Code, Metadata, Request, Status};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::outbox::Emit;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, validate};

mod conditions;
mod handlers;
mod peers;
mod records;
mod validation;

use conditions::*;
pub use peers::*;
pub use records::*;

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

#[cfg(test)]
mod tests;
