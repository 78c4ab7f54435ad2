//! environmental-narrative: lore fragments bound to locations, found by players when their
//! conditions hold — world-state facts, the game hour and day (time-manager) and the
//! region's weather (weather-manager), all read over NATS through the small [`World`]
//! trait, so unit tests substitute them — and earlier discoveries (chains of clues).
//!
//! Discover evaluates a location's fragments, then records the first discovery of each in
//! one store transaction that first looks for an existing record: transactions are
//! serialised, so of two racing calls (or a retry) exactly one records a fragment and
//! emits `evt.narrative.discovered`; the other answers `first_time` false.
//!
//! Tables (fragment ids are `[a-z0-9_.-]`, location and player ids have no control
//! characters, so `\0` separates key parts):
//! - `environmental_narrative.fragments`: fragment_id → [`Fragment`].
//! - `environmental_narrative.at`: location_id `\0` fragment_id → empty (by location).
//! - `environmental_narrative.found`: player_id `\0` fragment_id → [`Found`].
//! - `environmental_narrative.recent`: player_id `\0` !discovered_ms `\0` fragment_id →
//!   location_id, so ListDiscovered lists most recent first with one scan.
//! - `environmental_narrative.idempotency`: replies of DeleteFragment for their keys.
//!
//! DeleteFragment removes the fragment and its location row, and keeps the players'
//! discoveries (`found`, `recent`): they stop being listed while the fragment is gone and
//! still satisfy `requires_fragment_ids` of other fragments.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use aicore_proto::aicore::environmental_narrative::v1::{
    Conditions, DefineFragmentRequest, DefineFragmentResponse, DeleteFragmentRequest,
    DeleteFragmentResponse, DiscoverRequest, DiscoverResponse, Discovery,
    EnvironmentalNarrativeHandler, Fragment, FragmentDiscovered, ListDiscoveredRequest,
    ListDiscoveredResponse, WeatherCondition,
};
use aicore_proto::aicore::world_state::v1::Fact;
use aicore_proto::{CallOptions, Code, Metadata, Request, Status};
use futures::future::BoxFuture;

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::outbox::Emit;
use aicore_runtime::{Ctx, paging, validate};

const FRAGMENTS: &str = "environmental_narrative.fragments";
const AT: &str = "environmental_narrative.at";
const FOUND: &str = "environmental_narrative.found";
const RECENT: &str = "environmental_narrative.recent";
const LIST_TOKEN: u8 = b'D';
/// Replies of DeleteFragment kept for replays of their idempotency keys.
const IDEMPOTENCY: Idempotency = Idempotency::new("environmental_narrative.idempotency");
const MAX_LOCATION_CHARS: usize = 128;

/// The subject a first discovery is published on (payload: [`FragmentDiscovered`]).
pub const DISCOVERED_SUBJECT: &str = "evt.narrative.discovered";

/// Configuration of environmental-narrative (`[domains.environmental_narrative]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvironmentalNarrativeConfig {
    /// Most fragments bound to one location (a DefineFragment past it is
    /// ResourceExhausted), so one Discover's work stays bounded.
    pub max_fragments_per_location: usize,
    /// Longest fragment text, in characters.
    pub max_text_chars: usize,
    /// Longest title, in characters.
    pub max_title_chars: usize,
    /// Most conditions of each kind (facts, weathers, required fragments) on a fragment.
    pub max_conditions: usize,
    /// Page size of ListDiscovered when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of ListDiscovered.
    pub max_page_size: u32,
}

impl Default for EnvironmentalNarrativeConfig {
    fn default() -> Self {
        EnvironmentalNarrativeConfig {
            max_fragments_per_location: 200,
            max_text_chars: 8000,
            max_title_chars: 200,
            max_conditions: 32,
            default_page_size: 50,
            max_page_size: 500,
        }
    }
}

/// One player's discovery of one fragment (value of `environmental_narrative.found`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Found {
    /// When it was first discovered.
    #[prost(message, optional, tag = "1")]
    pub discovered_at: Option<prost_types::Timestamp>,
    /// Where (the fragment's location then).
    #[prost(string, tag = "2")]
    pub location_id: String,
}

/// Game time now, as conditions read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GameNow {
    /// Game day since the epoch.
    pub day: i64,
    /// 0–23.
    pub hour: i32,
}

/// What conditions read from other domains: world-state, time-manager and
/// weather-manager over NATS in production.
pub trait World: Send + Sync + 'static {
    /// The live fact under `key`, or `None`.
    fn fact(
        &self,
        key: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Option<Fact>, Status>>;
    /// The game clock now.
    fn now(&self, options: CallOptions) -> BoxFuture<'_, Result<GameNow, Status>>;
    /// A region's weather condition now (weather-manager's enum number, which this
    /// contract's `WeatherCondition` repeats).
    fn weather(
        &self,
        region_id: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<i32, Status>>;
}

/// The production [`World`]: the SDK client.
pub struct OverNats {
    ctx: Ctx,
}

impl World for OverNats {
    fn fact(
        &self,
        key: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Option<Fact>, Status>> {
        Box::pin(async move { aicore_runtime::facts::fetch(&self.ctx, key, &options).await })
    }

    fn now(&self, options: CallOptions) -> BoxFuture<'_, Result<GameNow, Status>> {
        use aicore_proto::aicore::time_manager::v1::{NowRequest, TimeManagerClient};
        Box::pin(async move {
            let client = TimeManagerClient::new(self.ctx.client()?.clone());
            let r = client.now(NowRequest::default(), &options).await?;
            let t = r
                .clock
                .and_then(|c| c.game_time)
                .ok_or_else(|| Status::internal("time-manager answered no game time"))?;
            Ok(GameNow {
                day: t.day,
                hour: t.hour,
            })
        })
    }

    fn weather(
        &self,
        region_id: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<i32, Status>> {
        use aicore_proto::aicore::weather_manager::v1::{CurrentRequest, WeatherManagerClient};
        Box::pin(async move {
            let client = WeatherManagerClient::new(self.ctx.client()?.clone());
            let r = client
                .current(CurrentRequest { region_id }, &options)
                .await?;
            Ok(r.weather.map_or(0, |w| w.condition))
        })
    }
}

/// The environmental-narrative domain.
pub struct EnvironmentalNarrative {
    ctx: Ctx,
    config: EnvironmentalNarrativeConfig,
    world: Arc<dyn World>,
}

impl aicore_runtime::Domain for EnvironmentalNarrative {
    type Config = EnvironmentalNarrativeConfig;

    fn build(
        ctx: &Ctx,
        config: &EnvironmentalNarrativeConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let world = Arc::new(OverNats { ctx: ctx.clone() });
        Ok(Arc::new(
            aicore_proto::aicore::environmental_narrative::v1::EnvironmentalNarrativeServer(
                Arc::new(EnvironmentalNarrative::new(
                    ctx.clone(),
                    config.clone(),
                    world,
                )),
            ),
        ))
    }
}

fn pair(a: &str, b: &str) -> Vec<u8> {
    [a.as_bytes(), b"\0", b.as_bytes()].concat()
}

fn prefix(a: &str) -> Vec<u8> {
    [a.as_bytes(), b"\0"].concat()
}

fn millis(ts: &prost_types::Timestamp) -> u64 {
    std::time::SystemTime::try_from(*ts)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

fn check_location(id: &str, field: &str) -> Result<(), Status> {
    let n = id.chars().count();
    if n == 0 || n > MAX_LOCATION_CHARS || id.chars().any(char::is_control) {
        return Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_LOCATION_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// Whether game hour `hour` is in `[from, to)`, wrapping past midnight; equal bounds mean
/// any hour.
pub fn hour_in(hour: i32, from: i32, to: i32) -> bool {
    if from == to {
        true
    } else if from < to {
        (from..to).contains(&hour)
    } else {
        hour >= from || hour < to
    }
}

fn has_time_condition(c: &Conditions) -> bool {
    c.from_hour != c.to_hour || c.min_game_day > 0
}

/// What one Discover read from the world, each thing once.
#[derive(Default)]
struct Readings {
    now: Option<GameNow>,
    weather: HashMap<String, i32>,
    facts: HashMap<String, Option<Fact>>,
    found: HashSet<String>,
}

impl EnvironmentalNarrative {
    /// The domain on a context, reading the world through `world`.
    pub fn new(ctx: Ctx, config: EnvironmentalNarrativeConfig, world: Arc<dyn World>) -> Self {
        EnvironmentalNarrative { ctx, config, world }
    }

    fn check_fragment(&self, f: &Fragment) -> Result<(), Status> {
        let c = &self.config;
        validate::slug(&f.fragment_id, "fragment.fragment_id", 64)?;
        check_location(&f.location_id, "fragment.location_id")?;
        if !f.region_id.is_empty() {
            validate::slug(&f.region_id, "fragment.region_id", 64)?;
        }
        if f.title.chars().count() > c.max_title_chars {
            return Err(Status::invalid(
                "fragment.title",
                format!("must be at most {} characters", c.max_title_chars),
            ));
        }
        let n = f.text.chars().count();
        if n == 0 || n > c.max_text_chars {
            return Err(Status::invalid(
                "fragment.text",
                format!("must be 1 to {} characters", c.max_text_chars),
            ));
        }
        if f.document_ids.len() > c.max_conditions {
            return Err(Status::invalid(
                "fragment.document_ids",
                format!("must hold at most {} ids", c.max_conditions),
            ));
        }
        for (i, d) in f.document_ids.iter().enumerate() {
            validate::slug(d, &format!("fragment.document_ids[{i}]"), 128)?;
        }
        let Some(cond) = &f.conditions else {
            return Ok(());
        };
        for (name, len) in [
            ("facts", cond.facts.len()),
            ("weather", cond.weather.len()),
            ("requires_fragment_ids", cond.requires_fragment_ids.len()),
        ] {
            if len > c.max_conditions {
                return Err(Status::invalid(
                    &format!("fragment.conditions.{name}"),
                    format!("must hold at most {}", c.max_conditions),
                ));
            }
        }
        for (i, fc) in cond.facts.iter().enumerate() {
            aicore_runtime::facts::check_condition(
                &format!("fragment.conditions.facts[{i}]"),
                &fc.key,
                fc.op,
                fc.value.as_ref(),
            )?;
        }
        for (name, h) in [("from_hour", cond.from_hour), ("to_hour", cond.to_hour)] {
            if !(0..24).contains(&h) {
                return Err(Status::invalid(
                    &format!("fragment.conditions.{name}"),
                    "must be a game hour, 0 to 23",
                ));
            }
        }
        for (i, w) in cond.weather.iter().enumerate() {
            if matches!(
                WeatherCondition::try_from(*w),
                Err(_) | Ok(WeatherCondition::Unspecified)
            ) {
                return Err(Status::invalid(
                    &format!("fragment.conditions.weather[{i}]"),
                    "must be a known weather condition",
                ));
            }
        }
        if !cond.weather.is_empty() && f.region_id.is_empty() {
            return Err(Status::invalid(
                "fragment.region_id",
                "is required with weather conditions",
            ));
        }
        for (i, r) in cond.requires_fragment_ids.iter().enumerate() {
            let field = format!("fragment.conditions.requires_fragment_ids[{i}]");
            validate::slug(r, &field, 64)?;
            if *r == f.fragment_id {
                return Err(Status::invalid(&field, "a fragment cannot require itself"));
            }
        }
        if cond.min_game_day < 0 {
            return Err(Status::invalid(
                "fragment.conditions.min_game_day",
                "must be 0 or more",
            ));
        }
        Ok(())
    }

    /// Reads what the fragments' conditions need, each thing once.
    async fn read(
        &self,
        player: &str,
        fragments: &[Fragment],
        options: &CallOptions,
    ) -> Result<Readings, Status> {
        let mut r = Readings::default();
        let conds = || {
            fragments
                .iter()
                .filter_map(|f| f.conditions.as_ref().map(|c| (f, c)))
        };
        if conds().any(|(_, c)| has_time_condition(c)) {
            r.now = Some(self.world.now(options.clone()).await?);
        }
        let regions: BTreeSet<&str> = conds()
            .filter(|(_, c)| !c.weather.is_empty())
            .map(|(f, _)| f.region_id.as_str())
            .collect();
        for region in regions {
            let w = self
                .world
                .weather(region.to_string(), options.clone())
                .await?;
            r.weather.insert(region.to_string(), w);
        }
        let keys: BTreeSet<&str> = conds()
            .flat_map(|(_, c)| c.facts.iter().map(|f| f.key.as_str()))
            .collect();
        for key in keys {
            let fact = self.world.fact(key.to_string(), options.clone()).await?;
            r.facts.insert(key.to_string(), fact);
        }
        for (_, c) in conds() {
            for id in &c.requires_fragment_ids {
                if self.ctx.store.get(FOUND, &pair(player, id))?.is_some() {
                    r.found.insert(id.clone());
                }
            }
        }
        Ok(r)
    }
}

/// Whether a fragment may be found given what was read.
fn available(f: &Fragment, r: &Readings) -> bool {
    let Some(c) = &f.conditions else {
        return true;
    };
    if has_time_condition(c) {
        let Some(now) = r.now else { return false };
        if !hour_in(now.hour, c.from_hour, c.to_hour) || now.day < c.min_game_day {
            return false;
        }
    }
    if !c.weather.is_empty() {
        let w = r.weather.get(&f.region_id).copied().unwrap_or(0);
        if !c.weather.contains(&w) {
            return false;
        }
    }
    c.facts.iter().all(|fc| {
        let fact = r.facts.get(&fc.key).and_then(Option::as_ref);
        aicore_runtime::facts::holds(fc.op, fc.value.as_ref(), fact)
    }) && c
        .requires_fragment_ids
        .iter()
        .all(|id| r.found.contains(id))
}

/// Calls on the domain's own authority (a player may not read world facts directly).
fn own_authority(meta: &Metadata) -> CallOptions {
    CallOptions {
        caller: None,
        ..CallOptions::from_meta(meta)
    }
}

impl EnvironmentalNarrativeHandler for EnvironmentalNarrative {
    async fn define_fragment(
        &self,
        request: Request<DefineFragmentRequest>,
    ) -> Result<DefineFragmentResponse, Status> {
        let req = request.body;
        let mut f = req
            .fragment
            .ok_or_else(|| Status::invalid("fragment", "is required"))?;
        self.check_fragment(&f)?;
        let now = self.ctx.now_ts();
        let expected = req.expected_version;
        let max = self.config.max_fragments_per_location;
        self.ctx
            .store
            .write(move |tx| {
                let live = tx.get_msg::<Fragment>(FRAGMENTS, f.fragment_id.as_bytes())?;
                let version = live.as_ref().map_or(0, |l| l.version);
                let what = format!("fragment `{}`", f.fragment_id);
                validate::expected_version(expected, version, &what)?;
                let moved = live.as_ref().is_none_or(|l| l.location_id != f.location_id);
                if moved {
                    let here = prefix(&f.location_id);
                    if tx.scan(AT, &here, &here, max)?.len() >= max {
                        return Err(Status::with_field(
                            Code::ResourceExhausted,
                            "fragment.location_id",
                            format!("the location already has {max} fragments"),
                        ));
                    }
                    if let Some(l) = &live {
                        tx.delete(AT, &pair(&l.location_id, &l.fragment_id));
                    }
                    tx.put(AT, &pair(&f.location_id, &f.fragment_id), Vec::new());
                }
                f.version = live.map_or(0, |l| l.version) + 1;
                f.updated_at = Some(now);
                tx.put_msg(FRAGMENTS, f.fragment_id.as_bytes(), &f);
                Ok(DefineFragmentResponse { fragment: Some(f) })
            })
            .await
    }

    async fn delete_fragment(
        &self,
        request: Request<DeleteFragmentRequest>,
    ) -> Result<DeleteFragmentResponse, Status> {
        let req = request.body;
        validate::slug(&req.fragment_id, "fragment_id", 64)?;
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "delete_fragment", &req.fragment_id, &req)?;
        let (id, expected) = (req.fragment_id, req.expected_version);
        keyed
            .write(move |tx| {
                let live = tx
                    .get_msg::<Fragment>(FRAGMENTS, id.as_bytes())?
                    .ok_or_else(|| {
                        Status::with_field(
                            Code::NotFound,
                            "fragment_id",
                            format!("no fragment `{id}`"),
                        )
                    })?;
                let what = format!("fragment `{id}`");
                validate::expected_version(expected, live.version, &what)?;
                tx.delete(AT, &pair(&live.location_id, &id));
                tx.delete(FRAGMENTS, id.as_bytes());
                Ok(DeleteFragmentResponse {
                    deleted_version: live.version,
                })
            })
            .await
    }

    async fn discover(
        &self,
        request: Request<DiscoverRequest>,
    ) -> Result<DiscoverResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        check_location(&req.location_id, "location_id")?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let here = prefix(&req.location_id);
        let rows = self
            .ctx
            .store
            .scan(AT, &here, &here, self.config.max_fragments_per_location)?;
        let mut fragments = Vec::with_capacity(rows.len());
        for (k, _) in rows {
            let id = &k[here.len()..];
            if let Some(f) = self.ctx.store.get_msg_cached::<Fragment>(FRAGMENTS, id)? {
                fragments.push(f);
            }
        }
        let readings = self
            .read(&req.player_id, &fragments, &own_authority(&meta))
            .await?;
        let mut eligible: Vec<Fragment> = fragments
            .into_iter()
            .filter(|f| available(f, &readings))
            .collect();
        eligible.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.fragment_id.cmp(&b.fragment_id))
        });
        let (game_day, game_hour) = readings.now.map_or((0, 0), |n| (n.day, n.hour));
        if eligible.is_empty() {
            return Ok(DiscoverResponse {
                discoveries: Vec::new(),
                game_day,
                game_hour,
            });
        }
        let now = self.ctx.now_ts();
        let (player, location) = (req.player_id, req.location_id);
        let discoveries = self
            .ctx
            .store
            .write(move |tx| {
                let mut out = Vec::with_capacity(eligible.len());
                for f in eligible {
                    let key = pair(&player, &f.fragment_id);
                    if let Some(found) = tx.get_msg::<Found>(FOUND, &key)? {
                        out.push(Discovery {
                            fragment: Some(f),
                            discovered_at: found.discovered_at,
                            first_time: false,
                        });
                        continue;
                    }
                    tx.put_msg(
                        FOUND,
                        &key,
                        &Found {
                            discovered_at: Some(now),
                            location_id: location.clone(),
                        },
                    );
                    let recent = [
                        prefix(&player).as_slice(),
                        &(u64::MAX - millis(&now)).to_be_bytes(),
                        b"\0",
                        f.fragment_id.as_bytes(),
                    ]
                    .concat();
                    tx.put(RECENT, &recent, location.clone().into_bytes());
                    tx.emit(&FragmentDiscovered {
                        player_id: player.clone(),
                        fragment_id: f.fragment_id.clone(),
                        location_id: location.clone(),
                        discovered_at: Some(now),
                    })?;
                    out.push(Discovery {
                        fragment: Some(f),
                        discovered_at: Some(now),
                        first_time: true,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(DiscoverResponse {
            discoveries,
            game_day,
            game_hour,
        })
    }

    async fn list_discovered(
        &self,
        request: Request<ListDiscoveredRequest>,
    ) -> Result<ListDiscoveredResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        if !req.location_id.is_empty() {
            check_location(&req.location_id, "location_id")?;
        }
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let limit = paging::page_size(
            req.page_size,
            self.config.default_page_size,
            self.config.max_page_size,
        )?;
        let mine = prefix(&req.player_id);
        let mut page = paging::Page::start(
            paging::Listing {
                store: &self.ctx.store,
                table: RECENT,
                prefix: &mine,
                kind: LIST_TOKEN,
                limit,
                max_scan: limit.saturating_mul(20),
            },
            &req.page_token,
        )?;
        while let Some((k, v)) = page.next_row()? {
            if !req.location_id.is_empty() && v.as_ref() != req.location_id.as_bytes() {
                continue;
            }
            // player \0 !ms(8) \0 fragment_id
            let Some(id) = k.get(mine.len() + 9..) else {
                continue;
            };
            let Some(fragment) = self.ctx.store.get_msg_cached::<Fragment>(FRAGMENTS, id)? else {
                continue;
            };
            let found = self
                .ctx
                .store
                .get_msg::<Found>(FOUND, &pair(&req.player_id, &fragment.fragment_id))?;
            page.keep(Discovery {
                fragment: Some(fragment),
                discovered_at: found.and_then(|f| f.discovered_at),
                first_time: false,
            });
        }
        let (discoveries, next_page_token) = page.finish();
        Ok(ListDiscoveredResponse {
            discoveries,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests;
