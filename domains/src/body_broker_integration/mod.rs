//! body-broker-integration: the game client's facade. Bootstrap composes a player's
//! session in one call from eight domains — account (auth), settings, wallet (payment),
//! active quests (quest-system), a world snapshot (world-state), game time
//! (time-manager), weather (weather-manager) and the performance profile
//! (performance-mode) — asked all at once over NATS, each bounded by a section deadline.
//!
//! Why it degrades instead of failing: a client starting a session can play with a
//! missing wallet or weather, not with an error screen because one domain restarts. So
//! every section stands alone: a domain that is not served, too slow, or refuses leaves
//! its section empty and listed in `unavailable`, with its error in `missing`.
//!
//! Calls carry the caller's identity and trace ([`CallOptions::from_meta`]): each domain
//! applies its own access rules, and a player can never read more through the facade than
//! directly. The facade checks the one rule of its own first: a player bootstraps only
//! themselves. It owns no data and no tables.

mod peers;

use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::body_broker_integration::v1::{
    ActiveQuest, Balance, BodyBrokerIntegrationHandler, BootstrapRequest, BootstrapResponse,
    GameClock, MissingSection, ObjectiveStatus, PerformanceProfile, PlayerProfile, RegionWeather,
    Section, SettingEntry, WorldFact,
};
use aicore_proto::{CallOptions, Code, Request, Status};
use aicore_runtime::{Ctx, validate};
use futures::future::BoxFuture;

pub use peers::OverNats;

/// Roles that may bootstrap any player.
const PRIVILEGED: &[&str] = &["service", "admin"];
/// Longest prefix or region id accepted, in characters.
const MAX_FILTER_CHARS: usize = 256;

/// Configuration of body-broker-integration (`[domains.body_broker_integration]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BodyBrokerIntegrationConfig {
    /// Longest wait for any one section, in milliseconds; the request's own deadline
    /// bounds it too. A section not answered by then is missing (DEADLINE_EXCEEDED).
    pub section_deadline_ms: u64,
    /// Page size used to read settings and the quest log.
    pub page_size: u32,
    /// Most pages read per section; a longer list is cut there (the client asks the
    /// domain directly for more).
    pub max_pages: u32,
}

impl Default for BodyBrokerIntegrationConfig {
    fn default() -> Self {
        BodyBrokerIntegrationConfig {
            section_deadline_ms: 2000,
            page_size: 100,
            max_pages: 10,
        }
    }
}

/// What one Bootstrap asks the peers for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The player whose session is composed.
    pub player_id: String,
    /// Only settings under this prefix.
    pub settings_prefix: String,
    /// Only world facts under this prefix.
    pub world_prefix: String,
    /// The region whose weather is wanted.
    pub weather_region: String,
    /// Page size for paged reads.
    pub page_size: u32,
    /// Most pages per paged read.
    pub max_pages: u32,
}

/// One composed section.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// From auth.
    Profile(PlayerProfile),
    /// From settings (player scope, effective values).
    Settings(Vec<SettingEntry>),
    /// From payment.
    Wallet(Vec<Balance>),
    /// From quest-system (active entries).
    Quests(Vec<ActiveQuest>),
    /// From world-state: the revision and the facts.
    World(u64, Vec<WorldFact>),
    /// From time-manager.
    GameTime(GameClock),
    /// From weather-manager.
    Weather(RegionWeather),
    /// From performance-mode.
    Performance(PerformanceProfile),
}

/// Where the sections come from: the domains over NATS in production, stand-ins in tests.
pub trait Peers: Send + Sync + 'static {
    /// Fetches one section for `query` with `options` (the caller's identity, bounded by
    /// the section deadline).
    fn fetch(
        &self,
        section: Section,
        query: Arc<Query>,
        options: CallOptions,
    ) -> BoxFuture<'static, Result<Part, Status>>;
}

/// The domain.
pub struct BodyBrokerIntegration {
    ctx: Ctx,
    config: BodyBrokerIntegrationConfig,
    peers: Arc<dyn Peers>,
}

/// Every section, in the order Bootstrap asks for them.
const ALL: [Section; 8] = [
    Section::Profile,
    Section::Settings,
    Section::Wallet,
    Section::Quests,
    Section::World,
    Section::GameTime,
    Section::Weather,
    Section::Performance,
];

fn filter(value: &str, field: &str) -> Result<(), Status> {
    if value.chars().count() > MAX_FILTER_CHARS || value.chars().any(char::is_control) {
        return Err(Status::invalid(
            field,
            format!("must be at most {MAX_FILTER_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

impl BodyBrokerIntegration {
    /// The domain over `peers`; refuses an inconsistent configuration.
    pub fn new(
        ctx: Ctx,
        config: BodyBrokerIntegrationConfig,
        peers: Arc<dyn Peers>,
    ) -> Result<Self, Status> {
        let bad = |m: &str| {
            Status::new(
                Code::InvalidArgument,
                format!("[domains.body_broker_integration] {m}"),
            )
        };
        if config.section_deadline_ms == 0 {
            return Err(bad("section_deadline_ms must be positive"));
        }
        if config.page_size == 0 || config.page_size > 1000 || config.max_pages == 0 {
            return Err(bad("page_size must be 1 to 1000 and max_pages positive"));
        }
        Ok(BodyBrokerIntegration { ctx, config, peers })
    }

    /// The player and sections `req` asks for, checked.
    fn checked(
        &self,
        meta: &aicore_proto::Metadata,
        req: BootstrapRequest,
    ) -> Result<(Query, Vec<Section>), Status> {
        let player_id = match (&req.player_id, &meta.caller) {
            (p, Some(c)) if p.is_empty() && !PRIVILEGED.iter().any(|r| c.has_role(r)) => {
                c.account_id.clone()
            }
            (p, _) if p.is_empty() => {
                return Err(Status::invalid(
                    "player_id",
                    "is required for service and admin callers",
                ));
            }
            (p, _) => p.clone(),
        };
        validate::player_id(&player_id, "player_id")?;
        meta.authorize_owner(&player_id, PRIVILEGED)?;
        filter(&req.settings_prefix, "settings_prefix")?;
        filter(&req.world_prefix, "world_prefix")?;
        filter(&req.weather_region, "weather_region")?;
        let mut sections = Vec::new();
        for (i, s) in req.sections.iter().enumerate() {
            match Section::try_from(*s) {
                Ok(Section::Unspecified) | Err(_) => {
                    return Err(Status::invalid(
                        &format!("sections[{i}]"),
                        format!("{s} is not a section"),
                    ));
                }
                Ok(s) if !sections.contains(&s) => sections.push(s),
                Ok(_) => {}
            }
        }
        if sections.is_empty() {
            sections = ALL
                .into_iter()
                .filter(|s| *s != Section::Weather || !req.weather_region.is_empty())
                .collect();
        } else if sections.contains(&Section::Weather) && req.weather_region.is_empty() {
            return Err(Status::invalid(
                "weather_region",
                "is required when SECTION_WEATHER is asked for",
            ));
        }
        Ok((
            Query {
                player_id,
                settings_prefix: req.settings_prefix,
                world_prefix: req.world_prefix,
                weather_region: req.weather_region,
                page_size: self.config.page_size,
                max_pages: self.config.max_pages,
            },
            sections,
        ))
    }
}

impl BodyBrokerIntegrationHandler for BodyBrokerIntegration {
    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> Result<BootstrapResponse, Status> {
        let Request { body: req, meta } = request;
        let (query, sections) = self.checked(&meta, req)?;
        let query = Arc::new(query);
        let limit = Duration::from_millis(self.config.section_deadline_ms);
        let deadline = meta.remaining().map_or(limit, |r| r.min(limit));
        let options = CallOptions {
            timeout: Some(deadline),
            ..CallOptions::from_meta(&meta)
        };
        // All at once; each bounded here too, so a peer that ignores its timeout cannot
        // hold the whole answer.
        let asks = sections.iter().map(|s| {
            let ask = self.peers.fetch(*s, query.clone(), options.clone());
            async move {
                match tokio::time::timeout(deadline, ask).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::new(
                        Code::DeadlineExceeded,
                        format!("no answer within {} ms", deadline.as_millis()),
                    )),
                }
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut out = BootstrapResponse::default();
        for (section, answer) in sections.into_iter().zip(answers) {
            match answer {
                Ok(part) => put(&mut out, part),
                Err(e) => {
                    tracing::debug!(section = section.as_str_name(), error = %e, "bootstrap section missing");
                    out.unavailable.push(section as i32);
                    out.missing.push(MissingSection {
                        section: section as i32,
                        code: e.code as i32,
                        message: e.message,
                    });
                }
            }
        }
        out.server_time = Some(self.ctx.now_ts());
        Ok(out)
    }
}

fn put(out: &mut BootstrapResponse, part: Part) {
    match part {
        Part::Profile(p) => out.profile = Some(p),
        Part::Settings(s) => out.settings = s,
        Part::Wallet(w) => out.wallet = w,
        Part::Quests(q) => out.active_quests = q,
        Part::World(rev, facts) => (out.world_revision, out.world) = (rev, facts),
        Part::GameTime(c) => out.game_time = Some(c),
        Part::Weather(w) => out.weather = Some(w),
        Part::Performance(p) => out.performance = Some(p),
    }
}

impl aicore_runtime::Domain for BodyBrokerIntegration {
    type Config = BodyBrokerIntegrationConfig;

    fn build(
        ctx: &Ctx,
        config: &BodyBrokerIntegrationConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let peers = Arc::new(OverNats { ctx: ctx.clone() });
        Ok(Arc::new(
            aicore_proto::aicore::body_broker_integration::v1::BodyBrokerIntegrationServer(
                Arc::new(BodyBrokerIntegration::new(
                    ctx.clone(),
                    config.clone(),
                    peers,
                )?),
            ),
        ))
    }
}

#[cfg(test)]
mod tests;
