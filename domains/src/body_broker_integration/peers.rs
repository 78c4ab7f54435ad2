//! The production [`Peers`]: each section asked of its domain through the SDK client, on
//! the caller's identity, and shaped into the facade's messages.

use super::*;

use aicore_proto::aicore::auth::v1 as auth;
use aicore_proto::aicore::payment::v1 as payment;
use aicore_proto::aicore::performance_mode::v1 as pm;
use aicore_proto::aicore::quest_system::v1 as quest;
use aicore_proto::aicore::settings::v1 as settings;
use aicore_proto::aicore::time_manager::v1 as time;
use aicore_proto::aicore::weather_manager::v1 as weather;
use aicore_proto::aicore::world_state::v1 as world;

/// An active quest read from the log, before its title is looked up.
struct Entry {
    /// The definition version the player accepted.
    title_version: u64,
    quest: ActiveQuest,
}

/// The domains over NATS.
pub struct OverNats {
    pub(super) ctx: Ctx,
}

impl Peers for OverNats {
    fn fetch(
        &self,
        section: Section,
        q: Arc<Query>,
        o: CallOptions,
    ) -> BoxFuture<'static, Result<Part, Status>> {
        let client = self.ctx.client().cloned();
        Box::pin(async move {
            let c = client?;
            match section {
                Section::Profile => profile(c, q, o).await,
                Section::Settings => settings_of(c, q, o).await,
                Section::Wallet => wallet(c, q, o).await,
                Section::Quests => quests(c, q, o).await,
                Section::World => world_facts(c, q, o).await,
                Section::GameTime => game_time(c, o).await,
                Section::Weather => weather_now(c, q, o).await,
                Section::Performance => performance(c, q, o).await,
                Section::Unspecified => Err(Status::invalid("sections", "unspecified section")),
            }
        })
    }
}

/// The account, from auth.
async fn profile(c: aicore_sdk::Client, q: Arc<Query>, o: CallOptions) -> Result<Part, Status> {
    let r = auth::AuthClient::new(c)
        .get_account(
            auth::GetAccountRequest {
                account_id: q.player_id.clone(),
            },
            &o,
        )
        .await?;
    let a = r.account.unwrap_or_default();
    Ok(Part::Profile(PlayerProfile {
        account_id: a.account_id,
        username: a.username,
        display_name: a.display_name,
        roles: a.roles,
    }))
}

/// The player's settings, a page at a time up to the query's page limit.
async fn settings_of(c: aicore_sdk::Client, q: Arc<Query>, o: CallOptions) -> Result<Part, Status> {
    let client = settings::SettingsClient::new(c);
    let (mut out, mut token) = (Vec::new(), String::new());
    for _ in 0..q.max_pages {
        let r = client
            .list(
                settings::ListRequest {
                    scope: settings::Scope::Player as i32,
                    player_id: q.player_id.clone(),
                    prefix: q.settings_prefix.clone(),
                    page_size: q.page_size as i32,
                    page_token: token,
                },
                &o,
            )
            .await?;
        out.extend(r.settings.into_iter().map(|s| SettingEntry {
            key: s.key,
            value: s.value,
            is_default: s.is_default,
            version: s.version,
        }));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Ok(Part::Settings(out))
}

/// The player's wallet (every currency), from payment.
async fn wallet(c: aicore_sdk::Client, q: Arc<Query>, o: CallOptions) -> Result<Part, Status> {
    let r = payment::PaymentClient::new(c)
        .get_wallet(
            payment::GetWalletRequest {
                player_id: q.player_id.clone(),
                currency: String::new(),
            },
            &o,
        )
        .await?;
    Ok(Part::Wallet(
        r.balances
            .into_iter()
            .map(|m| Balance {
                currency: m.currency,
                amount: m.amount,
            })
            .collect(),
    ))
}

/// Active quests from the quest log, with their titles.
async fn quests(c: aicore_sdk::Client, q: Arc<Query>, o: CallOptions) -> Result<Part, Status> {
    let client = quest::QuestSystemClient::new(c);
    let (mut out, mut token) = (Vec::new(), String::new());
    for _ in 0..q.max_pages {
        let r = client
            .get_log(
                quest::GetLogRequest {
                    player_id: q.player_id.clone(),
                    states: vec![quest::QuestState::Active as i32],
                    page_size: q.page_size as i32,
                    page_token: token,
                },
                &o,
            )
            .await?;
        out.extend(r.entries.into_iter().map(|e| {
            Entry {
                title_version: e.quest_version,
                quest: ActiveQuest {
                    quest_id: e.quest_id,
                    title: String::new(),
                    objectives: e
                        .objectives
                        .into_iter()
                        .map(|o| ObjectiveStatus {
                            objective_id: o.objective_id,
                            current: o.current,
                            target: o.target,
                        })
                        .collect(),
                    version: e.version,
                },
            }
        }));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    // Titles from the definitions the entries were accepted under, all
    // at once; a definition that cannot be read fails the section (a
    // quest without its title is not one a client can show).
    let titles = futures::future::try_join_all(out.iter().map(|e| {
        client.get_quest(
            quest::GetQuestRequest {
                quest_id: e.quest.quest_id.clone(),
                version: e.title_version,
            },
            &o,
        )
    }))
    .await?;
    Ok(Part::Quests(
        out.into_iter()
            .zip(titles)
            .map(|(e, t)| ActiveQuest {
                title: t.quest.map(|q| q.title).unwrap_or_default(),
                ..e.quest
            })
            .collect(),
    ))
}

/// A snapshot of the facts under the query's prefix, from world-state.
async fn world_facts(c: aicore_sdk::Client, q: Arc<Query>, o: CallOptions) -> Result<Part, Status> {
    let r = world::WorldStateClient::new(c)
        .snapshot(
            world::SnapshotRequest {
                prefix: q.world_prefix.clone(),
            },
            &o,
        )
        .await?;
    let facts = r
        .facts
        .into_iter()
        .map(|f| WorldFact {
            key: f.key,
            data: f.data,
            content_type: f.content_type,
            version: f.version,
        })
        .collect();
    Ok(Part::World(r.revision, facts))
}

/// The game clock, from time-manager.
async fn game_time(c: aicore_sdk::Client, o: CallOptions) -> Result<Part, Status> {
    let r = time::TimeManagerClient::new(c)
        .now(time::NowRequest { at: None }, &o)
        .await?;
    let clock = r.clock.unwrap_or_default();
    Ok(Part::GameTime(GameClock {
        game_seconds: clock.game_time.map_or(0, |t| t.seconds),
        scale: clock.scale,
        paused: clock.paused,
    }))
}

/// The region's weather now, from weather-manager.
async fn weather_now(c: aicore_sdk::Client, q: Arc<Query>, o: CallOptions) -> Result<Part, Status> {
    let r = weather::WeatherManagerClient::new(c)
        .current(
            weather::CurrentRequest {
                region_id: q.weather_region.clone(),
            },
            &o,
        )
        .await?;
    let w = r.weather.unwrap_or_default();
    let condition = w.condition().as_str_name().to_string();
    Ok(Part::Weather(RegionWeather {
        region_id: w.region_id,
        condition,
        temperature_c: w.temperature_c,
        intensity: w.intensity,
    }))
}

/// The player's performance mode.
async fn performance(c: aicore_sdk::Client, q: Arc<Query>, o: CallOptions) -> Result<Part, Status> {
    let r = pm::PerformanceModeClient::new(c)
        .get(
            pm::GetRequest {
                player_id: q.player_id.clone(),
            },
            &o,
        )
        .await?;
    let m = r.mode.unwrap_or_default();
    let p = m.profile.unwrap_or_default();
    Ok(Part::Performance(PerformanceProfile {
        name: p.name,
        max_tokens_per_request: p.max_tokens_per_request,
        ai_narration: p.ai_narration,
        automatic: m.automatic,
    }))
}
