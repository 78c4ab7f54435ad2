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
//!
//! This file holds the domain type and its handlers; beside it are `config`, `profiles`
//! (the configured profiles, checked) and `recommend` (Report's rules).

mod config;
mod profiles;
mod recommend;

use std::sync::Arc;

use aicore_proto::aicore::performance_mode::v1::{
    DefaultProfile, GetRequest, GetResponse, PerformanceModeHandler, PlayerMode, ProfileSource,
    ProfilesRequest, ProfilesResponse, ReportRequest, ReportResponse, SetDefaultRequest,
    SetDefaultResponse, SetRequest, SetResponse,
};
use aicore_proto::internal::performance_mode::{DefaultRecord, PlayerRecord};
use aicore_proto::{Request, Status};

use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, timestamp_ms, validate};

pub use config::{PerformanceModeConfig, ProfileConfig};

use profiles::Profiles;
use recommend::{Figures, recommend};

const PLAYERS: &str = "performance_mode.players";
const META: &str = "performance_mode.meta";
const DEFAULT_KEY: &[u8] = b"default";
/// Roles that may act for any player and set the global default.
const PRIVILEGED: &[&str] = &["service", "admin"];
const PROFILES_TOKEN: u8 = b'P';

/// The global default as the contract shows it.
fn shown_default(d: DefaultRecord) -> DefaultProfile {
    DefaultProfile {
        profile: d.profile,
        version: d.version,
        updated_at: timestamp_ms(d.updated_ms),
    }
}

/// The domain.
pub struct PerformanceMode {
    ctx: Ctx,
    config: PerformanceModeConfig,
    profiles: Arc<Profiles>,
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
