//! performance-mode: quality budgets per client. The studio configures profiles, lightest
//! first (by default `battery`, `balanced`, `quality`); each says what AI a player's
//! requests may use (largest model tier, tokens per request and per hour, the router's
//! latency budget and cost ceiling), how often the client refreshes world and NPC state,
//! whether narration is streamed, and the frame time it targets. Every player follows the
//! global default until they (or a service acting for them) choose a profile, or switch
//! on automatic mode, where Report moves them one profile at a time. ai-router asks Get
//! for the player's profile on every routing decision.
//!
//! Report's recommendation, from the client's figures and the profile it is on now:
//! 1. battery below `low_battery` → the lightest profile;
//! 2. p95 frame time above the current profile's target × `step_down_above` → one profile
//!    lighter;
//! 3. p95 frame time below the next richer profile's target × `step_up_below`, and the
//!    network's p50 latency at most `high_network_latency_ms` → one profile richer;
//! 4. otherwise the current one. Every rule that decided (or held back) is in `reasons`.
//!
//! Tables:
//! - `performance_mode.players`: player id → [`PlayerRecord`], holding only the profile's
//!   name (empty: the player follows the default), so changed profile settings apply to
//!   every player at once.
//! - `performance_mode.meta`: `default` → [`DefaultRecord`], the global default when set.
//!
//! Set and SetDefault are idempotent: repeating a request that changes nothing writes
//! nothing and keeps the version, so a client retrying after a lost answer does not see a
//! spurious Conflict on its next conditional write.

use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::performance_mode::v1::{
    DefaultProfile, GetRequest, GetResponse, ModelTier, PerformanceModeHandler, PlayerMode,
    Profile, ProfileSource, ProfilesRequest, ProfilesResponse, ReportRequest, ReportResponse,
    SetDefaultRequest, SetDefaultResponse, SetRequest, SetResponse,
};
use aicore_proto::internal::performance_mode::{DefaultRecord, PlayerRecord};
use aicore_proto::{Code, Request, Status};

use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, timestamp_ms, validate};

const PLAYERS: &str = "performance_mode.players";
const META: &str = "performance_mode.meta";
const DEFAULT_KEY: &[u8] = b"default";
/// Roles that may act for any player and set the global default.
const PRIVILEGED: &[&str] = &["service", "admin"];
const PROFILES_TOKEN: u8 = b'P';
/// Longest profile name, in characters of `[a-z0-9_.-]`.
const MAX_PROFILE_NAME: usize = 64;
/// Longest `device_class`, in characters.
const MAX_DEVICE_CLASS_CHARS: usize = 64;
/// Longest duration a Report figure may hold; more is a client's bug, not a measurement.
const MAX_FIGURE: Duration = Duration::from_secs(60);

/// One profile (`[[domains.performance_mode.profiles]]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileConfig {
    /// Its name, 1–64 characters of `[a-z0-9_.-]`, unique.
    pub name: String,
    /// One line for players and tools.
    pub description: String,
    /// Largest AI output per request, in tokens.
    pub max_tokens_per_request: u32,
    /// AI tokens a player may use per real hour; 0 for no limit.
    pub tokens_per_hour: u32,
    /// Largest model tier AI requests may use: `small`, `medium` or `large`.
    pub max_model_tier: String,
    /// How often the client should refresh world state, in milliseconds.
    pub world_tick_ms: u64,
    /// How often the client should refresh NPC state, in milliseconds.
    pub npc_tick_ms: u64,
    /// Whether to stream AI narration (otherwise templates only).
    pub ai_narration: bool,
    /// Frames per second the profile targets on the client (its frame-time target).
    pub target_fps: u32,
    /// The AI router's latency budget for requests under this profile when the caller
    /// gives none, in milliseconds; 0 for no limit.
    pub ai_latency_budget_ms: u64,
    /// The dearest model the AI router may choose, in micro-units per million tokens
    /// (input + output price); 0 for no ceiling.
    pub ai_max_cost_micros_per_million_tokens: u64,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            name: String::new(),
            description: String::new(),
            max_tokens_per_request: 512,
            tokens_per_hour: 0,
            max_model_tier: "medium".into(),
            world_tick_ms: 1000,
            npc_tick_ms: 2000,
            ai_narration: true,
            target_fps: 60,
            ai_latency_budget_ms: 0,
            ai_max_cost_micros_per_million_tokens: 0,
        }
    }
}

/// Configuration of performance-mode (`[domains.performance_mode]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerformanceModeConfig {
    /// The profile players follow until they choose, unless SetDefault set another.
    pub default_profile: String,
    /// Battery level (0–1) below which Report recommends the lightest profile.
    pub low_battery: f64,
    /// Report recommends one profile lighter when the p95 frame time exceeds the current
    /// target by this factor (> 1).
    pub step_down_above: f64,
    /// Report recommends one profile richer when the p95 frame time is below the richer
    /// profile's target times this factor (0–1): headroom, so it does not flap.
    pub step_up_below: f64,
    /// A network p50 latency above this (milliseconds) holds back a step up.
    pub high_network_latency_ms: u64,
    /// Page size of Profiles when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of Profiles.
    pub max_page_size: u32,
    /// The profiles, lightest first.
    pub profiles: Vec<ProfileConfig>,
}

impl Default for PerformanceModeConfig {
    fn default() -> Self {
        PerformanceModeConfig {
            default_profile: "balanced".into(),
            low_battery: 0.2,
            step_down_above: 1.15,
            step_up_below: 0.7,
            high_network_latency_ms: 150,
            default_page_size: 50,
            max_page_size: 100,
            profiles: vec![
                ProfileConfig {
                    name: "battery".into(),
                    description: "Small models, short answers, slow ticks, no narration, 30 fps."
                        .into(),
                    max_tokens_per_request: 256,
                    tokens_per_hour: 20_000,
                    max_model_tier: "small".into(),
                    world_tick_ms: 2000,
                    npc_tick_ms: 5000,
                    ai_narration: false,
                    target_fps: 30,
                    ai_latency_budget_ms: 2000,
                    ai_max_cost_micros_per_million_tokens: 1_000_000,
                },
                ProfileConfig {
                    name: "balanced".into(),
                    description: "Medium models, narration on, 60 fps.".into(),
                    max_tokens_per_request: 512,
                    tokens_per_hour: 60_000,
                    max_model_tier: "medium".into(),
                    world_tick_ms: 1000,
                    npc_tick_ms: 2000,
                    ai_narration: true,
                    target_fps: 60,
                    ai_latency_budget_ms: 5000,
                    ai_max_cost_micros_per_million_tokens: 5_000_000,
                },
                ProfileConfig {
                    name: "quality".into(),
                    description: "Any model, long answers, fast ticks, 60 fps.".into(),
                    max_tokens_per_request: 1024,
                    tokens_per_hour: 0,
                    max_model_tier: "large".into(),
                    world_tick_ms: 500,
                    npc_tick_ms: 1000,
                    ai_narration: true,
                    target_fps: 60,
                    ai_latency_budget_ms: 0,
                    ai_max_cost_micros_per_million_tokens: 0,
                },
            ],
        }
    }
}

fn tier(name: &str) -> Option<ModelTier> {
    match name {
        "small" => Some(ModelTier::Small),
        "medium" => Some(ModelTier::Medium),
        "large" => Some(ModelTier::Large),
        _ => None,
    }
}

fn millis(ms: u64) -> Option<prost_types::Duration> {
    (ms > 0).then(|| prost_types::Duration::try_from(Duration::from_millis(ms)).unwrap_or_default())
}

fn shown_default(d: DefaultRecord) -> DefaultProfile {
    DefaultProfile {
        profile: d.profile,
        version: d.version,
        updated_at: timestamp_ms(d.updated_ms),
    }
}

fn frame_time(fps: u32) -> Duration {
    Duration::from_secs(1) / fps.max(1)
}

/// The profiles as the contract shows them, checked once at start.
struct Profiles {
    list: Vec<Profile>,
    /// Frame-time target per profile, same order.
    targets: Vec<Duration>,
}

impl Profiles {
    fn from_config(config: &PerformanceModeConfig) -> Result<Self, Status> {
        let bad = |m: String| {
            Status::new(
                Code::InvalidArgument,
                format!("[domains.performance_mode] {m}"),
            )
        };
        if config.profiles.is_empty() {
            return Err(bad("profiles: at least one profile is needed".into()));
        }
        let (mut list, mut targets) = (Vec::new(), Vec::new());
        for (i, p) in config.profiles.iter().enumerate() {
            validate::slug(&p.name, "name", MAX_PROFILE_NAME)
                .map_err(|e| bad(format!("profiles[{i}].{}", e.message)))?;
            if list.iter().any(|q: &Profile| q.name == p.name) {
                return Err(bad(format!(
                    "profiles[{i}].name: {:?} appears twice",
                    p.name
                )));
            }
            let max_tier = tier(&p.max_model_tier).ok_or_else(|| {
                bad(format!(
                    "profiles[{i}].max_model_tier: {:?} is not small, medium or large",
                    p.max_model_tier
                ))
            })?;
            if p.target_fps == 0 || p.target_fps > 1000 {
                return Err(bad(format!("profiles[{i}].target_fps: must be 1 to 1000")));
            }
            targets.push(frame_time(p.target_fps));
            list.push(Profile {
                name: p.name.clone(),
                description: p.description.clone(),
                max_tokens_per_request: p.max_tokens_per_request,
                tokens_per_hour: p.tokens_per_hour,
                max_model_tier: max_tier as i32,
                world_tick_interval: millis(p.world_tick_ms),
                npc_tick_interval: millis(p.npc_tick_ms),
                ai_narration: p.ai_narration,
                target_frame_time: prost_types::Duration::try_from(frame_time(p.target_fps)).ok(),
                ai_latency_budget: millis(p.ai_latency_budget_ms),
                ai_max_cost_micros_per_million_tokens: p.ai_max_cost_micros_per_million_tokens,
            });
        }
        if !list.iter().any(|p| p.name == config.default_profile) {
            return Err(bad(format!(
                "default_profile: {:?} is not one of the profiles",
                config.default_profile
            )));
        }
        let ratios_ok = config.step_down_above > 1.0
            && config.step_down_above.is_finite()
            && config.step_up_below > 0.0
            && config.step_up_below < 1.0
            && (0.0..=1.0).contains(&config.low_battery);
        if !ratios_ok {
            return Err(bad(
                "step_down_above must be > 1, step_up_below in (0, 1), low_battery in [0, 1]"
                    .into(),
            ));
        }
        Ok(Profiles { list, targets })
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|p| p.name == name)
    }

    /// The profile named `name`, or InvalidArgument naming `field` with the known names.
    fn named(&self, name: &str, field: &str) -> Result<usize, Status> {
        self.index(name).ok_or_else(|| {
            Status::invalid(
                field,
                format!(
                    "unknown profile {name:?}; known: {:?}",
                    self.list
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                ),
            )
        })
    }
}

/// The domain.
pub struct PerformanceMode {
    ctx: Ctx,
    config: PerformanceModeConfig,
    profiles: Arc<Profiles>,
}

/// The figures of a Report, checked.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p95: Duration,
    network_p50: Option<Duration>,
    battery: Option<f64>,
}

fn figure(d: &Option<prost_types::Duration>, field: &str) -> Result<Option<Duration>, Status> {
    let Some(d) = d else {
        return Ok(None);
    };
    let d = Duration::try_from(*d)
        .map_err(|_| Status::invalid(field, "must be a non-negative duration"))?;
    if d > MAX_FIGURE {
        return Err(Status::invalid(
            field,
            format!("must be at most {}s", MAX_FIGURE.as_secs()),
        ));
    }
    Ok(Some(d))
}

impl Figures {
    fn from_request(req: &ReportRequest) -> Result<Self, Status> {
        let p95 = figure(&req.frame_time_p95, "frame_time_p95")?
            .ok_or_else(|| Status::invalid("frame_time_p95", "is required"))?;
        if p95.is_zero() {
            return Err(Status::invalid("frame_time_p95", "must be positive"));
        }
        if let Some(p50) = figure(&req.frame_time_p50, "frame_time_p50")?
            && p50 > p95
        {
            return Err(Status::invalid(
                "frame_time_p50",
                "must not exceed frame_time_p95",
            ));
        }
        let network_p50 = figure(&req.network_latency_p50, "network_latency_p50")?;
        figure(&req.window, "window")?;
        if let Some(b) = req.battery_level
            && !(0.0..=1.0).contains(&b)
        {
            return Err(Status::invalid("battery_level", "must be between 0 and 1"));
        }
        if req.device_class.chars().count() > MAX_DEVICE_CLASS_CHARS
            || req.device_class.chars().any(char::is_control)
        {
            return Err(Status::invalid(
                "device_class",
                format!(
                    "must be at most {MAX_DEVICE_CLASS_CHARS} characters without control characters"
                ),
            ));
        }
        Ok(Figures {
            p95,
            network_p50,
            battery: req.battery_level,
        })
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The profile (index) to recommend to a client on profile `current`, and why.
fn recommend(
    profiles: &Profiles,
    config: &PerformanceModeConfig,
    current: usize,
    f: Figures,
) -> (usize, Vec<String>) {
    let name = |i: usize| profiles.list[i].name.as_str();
    if let Some(b) = f.battery
        && b < config.low_battery
    {
        return (
            0,
            vec![format!(
                "battery {:.0}% below {:.0}%: the lightest profile, {}",
                b * 100.0,
                config.low_battery * 100.0,
                name(0)
            )],
        );
    }
    let target = profiles.targets[current];
    if f.p95.as_secs_f64() > target.as_secs_f64() * config.step_down_above {
        if current == 0 {
            return (
                0,
                vec![format!(
                    "p95 frame time {} above {} target, already on the lightest profile",
                    ms(f.p95),
                    ms(target)
                )],
            );
        }
        return (
            current - 1,
            vec![format!(
                "p95 frame time {} above {} target of {}: one profile lighter",
                ms(f.p95),
                ms(target),
                name(current)
            )],
        );
    }
    let mut reasons = vec![format!(
        "p95 frame time {} within {} target of {}",
        ms(f.p95),
        ms(target),
        name(current)
    )];
    if let Some(richer) = (current + 1 < profiles.list.len()).then_some(current + 1) {
        let room = profiles.targets[richer].as_secs_f64() * config.step_up_below;
        if f.p95.as_secs_f64() < room {
            let slow_net = f
                .network_p50
                .filter(|n| n.as_millis() > u128::from(config.high_network_latency_ms));
            if let Some(n) = slow_net {
                reasons.push(format!(
                    "room for {}, but network p50 {} above {} ms",
                    name(richer),
                    ms(n),
                    config.high_network_latency_ms
                ));
            } else {
                reasons.push(format!(
                    "p95 frame time below {} ({:.0}% of {} target): one profile richer",
                    ms(Duration::from_secs_f64(room)),
                    config.step_up_below * 100.0,
                    name(richer)
                ));
                return (richer, reasons);
            }
        }
    }
    (current, reasons)
}

impl PerformanceMode {
    /// The domain on a context; refuses an inconsistent configuration.
    pub fn new(ctx: Ctx, config: PerformanceModeConfig) -> Result<Self, Status> {
        let profiles = Arc::new(Profiles::from_config(&config)?);
        Ok(PerformanceMode {
            ctx,
            config,
            profiles,
        })
    }

    /// The global default as set (None: never set; an empty `profile`: cleared).
    fn stored_default(&self) -> Result<Option<DefaultRecord>, Status> {
        self.ctx.store.get_msg_cached(META, DEFAULT_KEY)
    }

    /// The index of the profile players without a choice follow, given the stored default.
    fn default_index(&self, stored: Option<&DefaultRecord>) -> usize {
        stored
            .and_then(|d| self.profiles.index(&d.profile))
            .or_else(|| self.profiles.index(&self.config.default_profile))
            .unwrap_or(0)
    }

    /// `stored` (a player's record, or none) as the contract shows it: the full profile.
    fn shown(&self, player_id: &str, stored: Option<PlayerRecord>, default: usize) -> PlayerMode {
        let r = stored.unwrap_or_default();
        // Never chose, or chose a profile the studio has since removed: the default.
        let (profile, source) = match self.profiles.index(&r.profile) {
            Some(i) => (i, r.source),
            None => (default, ProfileSource::Default as i32),
        };
        PlayerMode {
            player_id: player_id.to_string(),
            profile: Some(self.profiles.list[profile].clone()),
            source,
            automatic: r.automatic,
            recommended_profile: r.recommended_profile,
            version: r.version,
            updated_at: timestamp_ms(r.updated_ms),
        }
    }

    fn check_player(meta: &aicore_proto::Metadata, player_id: &str) -> Result<(), Status> {
        validate::player_id(player_id, "player_id")?;
        meta.authorize_owner(player_id, PRIVILEGED)
    }
}

/// Reads a player's record inside a write.
fn read_player(tx: &mut Tx<'_>, player_id: &str) -> Result<Option<PlayerRecord>, Status> {
    tx.get_msg::<PlayerRecord>(PLAYERS, player_id.as_bytes())
}

/// Stores `next` as the new state of `live` (version bumped, stamped `now_ms`) unless it
/// changes nothing; returns the record as it stands.
fn commit_player(
    tx: &mut Tx<'_>,
    player_id: &str,
    live: Option<PlayerRecord>,
    mut next: PlayerRecord,
    now_ms: i64,
) -> PlayerRecord {
    let old = live.unwrap_or_default();
    (next.version, next.updated_ms) = (old.version, old.updated_ms);
    if next == old && old.version > 0 {
        return old;
    }
    (next.version, next.updated_ms) = (old.version + 1, now_ms);
    tx.put_msg(PLAYERS, player_id.as_bytes(), &next);
    next
}

impl PerformanceModeHandler for PerformanceMode {
    async fn get(&self, request: Request<GetRequest>) -> Result<GetResponse, Status> {
        let Request { body: req, meta } = request;
        Self::check_player(&meta, &req.player_id)?;
        let stored = self
            .ctx
            .store
            .get_msg_cached::<PlayerRecord>(PLAYERS, req.player_id.as_bytes())?;
        let default = self.default_index(self.stored_default()?.as_ref());
        Ok(GetResponse {
            mode: Some(self.shown(&req.player_id, stored, default)),
        })
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<SetResponse, Status> {
        let Request { body: req, meta } = request;
        Self::check_player(&meta, &req.player_id)?;
        let chosen = match (req.profile.is_empty(), req.automatic) {
            (true, false) => {
                return Err(Status::invalid(
                    "profile",
                    "is required unless automatic is set",
                ));
            }
            (true, true) => None,
            (false, _) => Some(self.profiles.named(&req.profile, "profile")?),
        };
        let names = self.profiles.clone();
        let now_ms = aicore_runtime::millis(&self.ctx.now_ts());
        let (player_id, automatic, expected) = (req.player_id, req.automatic, req.expected_version);
        let shown_id = player_id.clone();
        let stored = self
            .ctx
            .store
            .write(move |tx| {
                let live = read_player(tx, &player_id)?;
                validate::expected_version(
                    expected,
                    live.as_ref().map_or(0, |m| m.version),
                    "mode",
                )?;
                let mut next = live.clone().unwrap_or_else(|| PlayerRecord {
                    source: ProfileSource::Default as i32,
                    ..Default::default()
                });
                if let Some(i) = chosen {
                    next.profile = names.list[i].name.clone();
                    next.source = ProfileSource::Player as i32;
                }
                next.automatic = automatic;
                Ok(commit_player(tx, &player_id, live, next, now_ms))
            })
            .await?;
        let default = self.default_index(self.stored_default()?.as_ref());
        Ok(SetResponse {
            mode: Some(self.shown(&shown_id, Some(stored), default)),
        })
    }

    async fn report(&self, request: Request<ReportRequest>) -> Result<ReportResponse, Status> {
        let Request { body: req, meta } = request;
        Self::check_player(&meta, &req.player_id)?;
        let figures = Figures::from_request(&req)?;
        let default = self.default_index(self.stored_default()?.as_ref());
        let (profiles, config) = (self.profiles.clone(), self.config.clone());
        let now_ms = aicore_runtime::millis(&self.ctx.now_ts());
        let player_id = req.player_id;
        let shown_id = player_id.clone();
        let (stored, recommended, reasons, applied) = self
            .ctx
            .store
            .write(move |tx| {
                let live = read_player(tx, &player_id)?;
                let current = live
                    .as_ref()
                    .and_then(|m| profiles.index(&m.profile))
                    .unwrap_or(default);
                let (to, reasons) = recommend(&profiles, &config, current, figures);
                let name = profiles.list[to].name.clone();
                let applied = live.as_ref().is_some_and(|m| m.automatic) && to != current;
                let mut next = live.clone().unwrap_or_else(|| PlayerRecord {
                    source: ProfileSource::Default as i32,
                    ..Default::default()
                });
                next.recommended_profile = name.clone();
                if applied {
                    next.profile = name.clone();
                    next.source = ProfileSource::Automatic as i32;
                }
                // A steady client costs no write: only a new recommendation is stored.
                let m = commit_player(tx, &player_id, live, next, now_ms);
                Ok((m, name, reasons, applied))
            })
            .await?;
        Ok(ReportResponse {
            recommended_profile: recommended,
            reasons,
            applied,
            mode: Some(self.shown(&shown_id, Some(stored), default)),
        })
    }

    async fn profiles(
        &self,
        request: Request<ProfilesRequest>,
    ) -> Result<ProfilesResponse, Status> {
        let req = request.body;
        let size = paging::page_size(
            req.page_size,
            self.config.default_page_size,
            self.config.max_page_size,
        )?;
        let start = if req.page_token.is_empty() {
            0
        } else {
            let raw = paging::decode_token(PROFILES_TOKEN, &req.page_token)?;
            let at = <[u8; 4]>::try_from(raw.as_slice()).map_err(|_| paging::bad_token())?;
            u32::from_be_bytes(at) as usize
        };
        let all = &self.profiles.list;
        let end = (start + size).min(all.len());
        let page = all.get(start..end).unwrap_or_default().to_vec();
        let next_page_token = if end < all.len() {
            paging::encode_token(PROFILES_TOKEN, &(end as u32).to_be_bytes())
        } else {
            String::new()
        };
        let stored = self.stored_default()?;
        let default = self.default_index(stored.as_ref());
        Ok(ProfilesResponse {
            profiles: page,
            default_profile: all[default].name.clone(),
            next_page_token,
            global_default: stored.map(shown_default),
        })
    }

    async fn set_default(
        &self,
        request: Request<SetDefaultRequest>,
    ) -> Result<SetDefaultResponse, Status> {
        let req = request.body;
        if !req.profile.is_empty() {
            self.profiles.named(&req.profile, "profile")?;
        }
        let now_ms = aicore_runtime::millis(&self.ctx.now_ts());
        let stored = self
            .ctx
            .store
            .write(move |tx| {
                let live = tx.get_msg::<DefaultRecord>(META, DEFAULT_KEY)?;
                let version = live.as_ref().map_or(0, |d| d.version);
                validate::expected_version(req.expected_version, version, "default")?;
                if let Some(d) = live.filter(|d| d.profile == req.profile) {
                    return Ok(d);
                }
                let d = DefaultRecord {
                    profile: req.profile,
                    version: version + 1,
                    updated_ms: now_ms,
                };
                tx.put_msg(META, DEFAULT_KEY, &d);
                Ok(d)
            })
            .await?;
        let default = self.default_index(Some(&stored));
        Ok(SetDefaultResponse {
            default_profile: self.profiles.list[default].name.clone(),
            global_default: Some(shown_default(stored)),
        })
    }
}

impl aicore_runtime::Domain for PerformanceMode {
    type Config = PerformanceModeConfig;

    fn build(
        ctx: &Ctx,
        config: &PerformanceModeConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(Arc::new(
            aicore_proto::aicore::performance_mode::v1::PerformanceModeServer(Arc::new(
                PerformanceMode::new(ctx.clone(), config.clone())?,
            )),
        ))
    }
}

#[cfg(test)]
mod tests;
