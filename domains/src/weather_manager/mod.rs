//! weather-manager: regional weather from seeded Markov chains, one climate table per
//! season, with forecasts and scripted overrides.
//!
//! Determinism: a region's chain is a pure function of its definition and the step index
//! `k = game_seconds / step_seconds` (one game hour by default). Step `k`'s transition out
//! of step `k-1`'s condition uses the table of the season step `k` starts in and a draw
//! `u = splitmix64(seed, k)` — a counter-based generator, so no RNG state is kept, any
//! step can be drawn on its own, and the same seed always gives the same sequence. The
//! chain starts at `initial_condition` at step 0 and restarts from it every
//! [`EPOCH_STEPS`] steps (about 7.5 game years of hourly steps), which bounds the work of
//! computing any step from nothing; a cursor kept with the last observation makes the
//! usual case (the next few steps) cheap. Temperature and intensity are drawn the same
//! way (other salts). A forecast is therefore exact unless an override or a redefinition
//! intervenes.
//!
//! Game time comes from time-manager over NATS through the SDK (its Now RPC): handlers
//! ask it for the current game time, and a background task ([`WeatherManager::run`],
//! ended by `Ctx::shutdown`) polls it every `poll_interval_ms` and calls
//! [`WeatherManager::step`], which — per region, in one transaction that also records
//! the observation — emits `evt.weather.changed` for every step boundary (or override
//! start/end) since the last observation at which the condition changed; after a long gap
//! only the last `max_catch_up_steps` steps are replayed. Polling the clock rather than
//! following `evt.time.tick` keeps the domain independent of JetStream delivery and of
//! step lengths other than an hour; SetOverride, ClearOverride and DefineRegion observe
//! in their own transaction, so their changes are published at once.
//!
//! Seasons follow time-manager's calendar ([`aicore_runtime::calendar::season_at`]) with
//! the days per season time-manager reports with every clock reading.
//!
//! Tables:
//! - `weather_manager.regions`: region id → `Region`.
//! - `weather_manager.overrides`: region id → [`OverrideState`].
//! - `weather_manager.observed`: region id → [`Observed`], the weather last published and
//!   the chain cursor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aicore_proto::aicore::weather_manager::v1::{
    ClearOverrideRequest, ClearOverrideResponse, Climate, CurrentRequest, CurrentResponse,
    DefineRegionRequest, DefineRegionResponse, ForecastRequest, ForecastResponse,
    ListRegionsRequest, ListRegionsResponse, Region, Season, SetOverrideRequest,
    SetOverrideResponse, Weather, WeatherChangedEvent, WeatherCondition, WeatherManagerHandler,
};
use aicore_proto::{CallOptions, Code, Request, Status};
use futures::future::BoxFuture;

use aicore_runtime::outbox::Emit;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, validate};

const REGIONS: &str = "weather_manager.regions";
const OVERRIDES: &str = "weather_manager.overrides";
const OBSERVED: &str = "weather_manager.observed";
const LIST_TOKEN: u8 = b'R';

/// Published when a region's condition changes (payload: [`WeatherChangedEvent`]).
pub const CHANGED_SUBJECT: &str = "evt.weather.changed";
/// The chain restarts from `initial_condition` every this many steps (see the module doc).
pub const EPOCH_STEPS: i64 = 1 << 16;
/// Step length when a region gives none: one game hour.
pub const DEFAULT_STEP_SECONDS: i64 = 3600;
const MAX_REGION_ID: usize = 64;
const MAX_TEMPERATURE_C: f64 = 100.0;
const SALT_TRANSITION: u64 = 0x5452_414e;
const SALT_TEMPERATURE: u64 = 0x5445_4d50;
const SALT_INTENSITY: u64 = 0x494e_5445;

/// Configuration of weather-manager (`[domains.weather_manager]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeatherManagerConfig {
    /// How often the background task reads the game clock and publishes changes, in real
    /// milliseconds.
    pub poll_interval_ms: u64,
    /// Most steps one observation replays (and may publish changes for) after a gap;
    /// older steps are skipped.
    pub max_catch_up_steps: u32,
    /// Deadline of the call to time-manager's Now, in milliseconds.
    pub clock_timeout_ms: u64,
    /// Forecast steps when the request asks for none.
    pub default_forecast_steps: u32,
    /// Largest forecast, in steps.
    pub max_forecast_steps: u32,
    /// Regions one background transaction observes.
    pub observe_batch: usize,
    /// Page size of ListRegions when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of ListRegions.
    pub max_page_size: u32,
}

impl Default for WeatherManagerConfig {
    fn default() -> Self {
        WeatherManagerConfig {
            poll_interval_ms: 1000,
            max_catch_up_steps: 24,
            clock_timeout_ms: 2000,
            default_forecast_steps: 24,
            max_forecast_steps: 168,
            observe_batch: 64,
            default_page_size: 50,
            max_page_size: 500,
        }
    }
}

/// An override (value of `weather_manager.overrides`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OverrideState {
    /// The forced condition.
    #[prost(enumeration = "WeatherCondition", tag = "1")]
    pub condition: i32,
    /// The forced temperature; absent: the chain's.
    #[prost(double, optional, tag = "2")]
    pub temperature_c: Option<f64>,
    /// 0–1.
    #[prost(double, tag = "3")]
    pub intensity: f64,
    /// Game second it was set at.
    #[prost(int64, tag = "4")]
    pub from_game_seconds: i64,
    /// Game second it ends at (exclusive); 0 = until cleared.
    #[prost(int64, tag = "5")]
    pub until_game_seconds: i64,
    /// Why.
    #[prost(string, tag = "6")]
    pub reason: String,
}

impl OverrideState {
    fn active_at(&self, t: i64) -> bool {
        self.from_game_seconds <= t && (self.until_game_seconds == 0 || t < self.until_game_seconds)
    }
}

/// The weather last published for a region (value of `weather_manager.observed`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Observed {
    /// The step observed.
    #[prost(int64, tag = "1")]
    pub step: i64,
    /// The effective condition then (override included).
    #[prost(enumeration = "WeatherCondition", tag = "2")]
    pub condition: i32,
    /// The chain's own condition at `step` (a cursor for the next walk).
    #[prost(enumeration = "WeatherCondition", tag = "3")]
    pub chain_condition: i32,
    /// The region version the cursor belongs to.
    #[prost(uint64, tag = "4")]
    pub region_version: u64,
}

// ---------------------------------------------------------------- the chain

/// splitmix64's finaliser over (seed, step, salt): a counter-based generator.
fn draw(seed: u64, step: i64, salt: u64) -> u64 {
    let mut z = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw as a number in [0, 1).
fn unit(seed: u64, step: i64, salt: u64) -> f64 {
    (draw(seed, step, salt) >> 11) as f64 / (1u64 << 53) as f64
}

/// One season's table: for each condition, its successors with cumulative probabilities.
#[derive(Debug, Clone, Default)]
struct Table {
    rows: BTreeMap<i32, Vec<(i32, f64)>>,
    mean: f64,
    spread: f64,
}

/// A region's chain, compiled from its (validated) definition.
#[derive(Debug, Clone)]
pub struct Chain {
    seed: u64,
    step_seconds: i64,
    initial: i32,
    days_per_season: u32,
    /// Spring, summer, autumn, winter.
    seasons: [Table; 4],
}

impl Chain {
    /// Compiles a validated region.
    pub fn new(region: &Region, days_per_season: u32) -> Chain {
        let mut seasons: [Table; 4] = Default::default();
        for c in &region.climates {
            let Some(t) = usize::try_from(c.season - 1)
                .ok()
                .and_then(|i| seasons.get_mut(i))
            else {
                continue;
            };
            let mut weights: BTreeMap<i32, Vec<(i32, f64)>> = BTreeMap::new();
            for tr in &c.transitions {
                weights
                    .entry(tr.from_condition)
                    .or_default()
                    .push((tr.to_condition, tr.weight));
            }
            for (from, edges) in weights {
                let total: f64 = edges.iter().map(|e| e.1).sum();
                let mut acc = 0.0;
                let row = edges
                    .into_iter()
                    .map(|(to, w)| {
                        acc += w / total;
                        (to, acc)
                    })
                    .collect();
                t.rows.insert(from, row);
            }
            t.mean = c.mean_temperature_c;
            t.spread = c.temperature_spread_c;
        }
        Chain {
            seed: region.seed,
            step_seconds: step_seconds(region),
            initial: region.initial_condition,
            days_per_season,
            seasons,
        }
    }

    /// Game seconds per step.
    pub fn step_seconds(&self) -> i64 {
        self.step_seconds
    }

    /// The step game second `t` falls in.
    pub fn step_of(&self, t: i64) -> i64 {
        t.div_euclid(self.step_seconds)
    }

    fn table(&self, step: i64) -> &Table {
        let season = aicore_runtime::calendar::season_at(
            step.saturating_mul(self.step_seconds),
            self.days_per_season,
        );
        &self.seasons[(season - 1).clamp(0, 3) as usize]
    }

    /// The condition after `from` at step `step`.
    fn next(&self, from: i32, step: i64) -> i32 {
        if step.rem_euclid(EPOCH_STEPS) == 0 {
            return self.initial;
        }
        let Some(row) = self.table(step).rows.get(&from) else {
            // Validation makes every reachable condition have a row; stay put otherwise.
            return from;
        };
        let u = unit(self.seed, step, SALT_TRANSITION);
        row.iter()
            .find(|(_, cum)| u < *cum)
            .or(row.last())
            .map_or(from, |(to, _)| *to)
    }

    /// The chain's condition at `step`, walking from `cursor` (a known `(step, condition)`)
    /// when it is earlier in the same epoch, else from the epoch's start.
    pub fn condition_at(&self, step: i64, cursor: Option<(i64, i32)>) -> i32 {
        self.walk(step, 1, cursor)[0]
    }

    /// The chain's conditions at steps `first .. first + n`.
    pub fn walk(&self, first: i64, n: usize, cursor: Option<(i64, i32)>) -> Vec<i32> {
        let epoch_start = first - first.rem_euclid(EPOCH_STEPS);
        let (mut k, mut c) = match cursor {
            Some((ck, cc)) if ck <= first && ck >= epoch_start => (ck, cc),
            _ => (epoch_start, self.initial),
        };
        while k < first {
            k += 1;
            c = self.next(c, k);
        }
        let mut out = Vec::with_capacity(n.max(1));
        out.push(c);
        for _ in 1..n {
            k += 1;
            c = self.next(c, k);
            out.push(c);
        }
        out
    }

    /// The chain's weather over `step` with condition `condition`.
    fn weather(&self, region_id: &str, step: i64, condition: i32) -> Weather {
        let t = self.table(step);
        let temp = t.mean + t.spread * (2.0 * unit(self.seed, step, SALT_TEMPERATURE) - 1.0);
        Weather {
            region_id: region_id.to_string(),
            condition,
            temperature_c: (temp * 10.0).round() / 10.0,
            intensity: 0.2 + 0.8 * unit(self.seed, step, SALT_INTENSITY),
            from_game_seconds: step.saturating_mul(self.step_seconds),
            until_game_seconds: (step + 1).saturating_mul(self.step_seconds),
            overridden: false,
        }
    }
}

fn step_seconds(region: &Region) -> i64 {
    if region.step_seconds == 0 {
        DEFAULT_STEP_SECONDS
    } else {
        region.step_seconds
    }
}

/// The weather at game second `t` (in `step`) given the chain's condition there and an
/// override, if any.
fn effective(
    chain: &Chain,
    region_id: &str,
    step: i64,
    chain_condition: i32,
    ov: Option<&OverrideState>,
    t: i64,
) -> Weather {
    let mut w = chain.weather(region_id, step, chain_condition);
    if let Some(o) = ov.filter(|o| o.active_at(t)) {
        w.condition = o.condition;
        if let Some(temp) = o.temperature_c {
            w.temperature_c = temp;
        }
        w.intensity = o.intensity;
        w.overridden = true;
    }
    w
}

// ---------------------------------------------------------------- validation

fn condition_ok(c: i32) -> bool {
    WeatherCondition::try_from(c).is_ok_and(|c| c != WeatherCondition::Unspecified)
}

/// Checks a region definition; every refusal names the field.
pub fn validate_region(r: &Region) -> Result<(), Status> {
    validate::slug(&r.region_id, "region.region_id", MAX_REGION_ID)?;
    if r.name.chars().count() > 128 || r.name.chars().any(char::is_control) {
        return Err(Status::invalid(
            "region.name",
            "must be at most 128 characters without control characters",
        ));
    }
    if !condition_ok(r.initial_condition) {
        return Err(Status::invalid(
            "region.initial_condition",
            "must be a weather condition other than UNSPECIFIED",
        ));
    }
    if r.step_seconds != 0 && !(60..=30 * 86_400).contains(&r.step_seconds) {
        return Err(Status::invalid(
            "region.step_seconds",
            "must be 0 (one game hour) or 60 to 2592000 game seconds",
        ));
    }
    if r.climates.len() != 4 {
        return Err(Status::invalid(
            "region.climates",
            "must hold exactly one climate per season (four)",
        ));
    }
    let mut seasons = BTreeSet::new();
    let mut used = BTreeSet::from([r.initial_condition]);
    for (i, c) in r.climates.iter().enumerate() {
        let field = format!("region.climates[{i}]");
        if !Season::try_from(c.season).is_ok_and(|s| s != Season::Unspecified)
            || !seasons.insert(c.season)
        {
            return Err(Status::invalid(
                &format!("{field}.season"),
                "must be a season other than UNSPECIFIED, each season once",
            ));
        }
        check_climate(c, &field)?;
        for t in &c.transitions {
            used.insert(t.from_condition);
            used.insert(t.to_condition);
        }
    }
    // Every condition the chain can be in must be able to leave in every season, or the
    // chain would have nowhere to go after a season change.
    for (i, c) in r.climates.iter().enumerate() {
        let from: BTreeSet<i32> = c.transitions.iter().map(|t| t.from_condition).collect();
        if let Some(missing) = used.iter().find(|u| !from.contains(u)) {
            let name = WeatherCondition::try_from(*missing)
                .map(|c| c.as_str_name())
                .unwrap_or("?");
            return Err(Status::invalid(
                &format!("region.climates[{i}].transitions"),
                format!(
                    "{name} is used by the region but has no outgoing transition in this season"
                ),
            ));
        }
    }
    Ok(())
}

fn check_climate(c: &Climate, field: &str) -> Result<(), Status> {
    if !c.mean_temperature_c.is_finite() || c.mean_temperature_c.abs() > MAX_TEMPERATURE_C {
        return Err(Status::invalid(
            &format!("{field}.mean_temperature_c"),
            format!("must be between -{MAX_TEMPERATURE_C} and {MAX_TEMPERATURE_C}"),
        ));
    }
    if !c.temperature_spread_c.is_finite()
        || !(0.0..=MAX_TEMPERATURE_C).contains(&c.temperature_spread_c)
    {
        return Err(Status::invalid(
            &format!("{field}.temperature_spread_c"),
            format!("must be 0 to {MAX_TEMPERATURE_C}"),
        ));
    }
    if c.transitions.is_empty() {
        return Err(Status::invalid(
            &format!("{field}.transitions"),
            "must not be empty",
        ));
    }
    let mut edges = BTreeSet::new();
    for (j, t) in c.transitions.iter().enumerate() {
        let tf = format!("{field}.transitions[{j}]");
        if !condition_ok(t.from_condition) {
            return Err(Status::invalid(
                &format!("{tf}.from_condition"),
                "must be a weather condition other than UNSPECIFIED",
            ));
        }
        if !condition_ok(t.to_condition) {
            return Err(Status::invalid(
                &format!("{tf}.to_condition"),
                "must be a weather condition other than UNSPECIFIED",
            ));
        }
        if !(t.weight.is_finite() && t.weight > 0.0) {
            return Err(Status::invalid(
                &format!("{tf}.weight"),
                "must be a finite number > 0",
            ));
        }
        if !edges.insert((t.from_condition, t.to_condition)) {
            return Err(Status::invalid(
                &tf,
                "repeats a from/to pair already given in this climate",
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- game time

/// Where the current game time comes from: time-manager over NATS in production.
pub trait GameClock: Send + Sync + 'static {
    /// The current game time, in game seconds since the epoch.
    fn now(&self) -> BoxFuture<'_, Result<i64, Status>>;
    /// The calendar's days per season, as last seen (time-manager says it with every
    /// answer); `None` before the first.
    fn days_per_season(&self) -> Option<u32>;
}

/// time-manager's Now through the SDK client.
pub struct OverNats {
    ctx: Ctx,
    timeout: Duration,
    /// The calendar's days per season from the last answer (0 = none yet).
    days_per_season: std::sync::atomic::AtomicU32,
}

impl GameClock for OverNats {
    fn now(&self) -> BoxFuture<'_, Result<i64, Status>> {
        use aicore_proto::aicore::time_manager::v1::{NowRequest, TimeManagerClient};
        Box::pin(async move {
            let client = TimeManagerClient::new(self.ctx.client()?.clone());
            let r = client
                .now(NowRequest { at: None }, &CallOptions::timeout(self.timeout))
                .await?;
            let clock = r
                .clock
                .ok_or_else(|| Status::internal("time-manager returned no clock"))?;
            if clock.days_per_season > 0 {
                self.days_per_season
                    .store(clock.days_per_season, Ordering::Relaxed);
            }
            clock
                .game_time
                .map(|g| g.seconds)
                .ok_or_else(|| Status::internal("time-manager returned no game time"))
        })
    }

    fn days_per_season(&self) -> Option<u32> {
        Some(self.days_per_season.load(Ordering::Relaxed)).filter(|d| *d > 0)
    }
}

/// A game clock tests set by hand.
#[derive(Default)]
pub struct ManualGameClock(pub AtomicI64);

impl ManualGameClock {
    /// Sets the game time.
    pub fn set(&self, seconds: i64) {
        self.0.store(seconds, Ordering::SeqCst);
    }
}

impl GameClock for ManualGameClock {
    fn now(&self) -> BoxFuture<'_, Result<i64, Status>> {
        let v = self.0.load(Ordering::SeqCst);
        Box::pin(async move { Ok(v) })
    }

    fn days_per_season(&self) -> Option<u32> {
        Some(aicore_runtime::calendar::DEFAULT_DAYS_PER_SEASON)
    }
}

// ---------------------------------------------------------------- the domain

/// The weather-manager domain.
pub struct WeatherManager {
    ctx: Ctx,
    config: WeatherManagerConfig,
    clock: Arc<dyn GameClock>,
    /// Held from reading the game clock until the observation made with that reading is
    /// committed, by the background task and by every RPC that observes: observations
    /// then commit in the order of their clock readings. Without it, a step that read the
    /// clock before an override but committed after it would observe an older time than
    /// the override's, and publish a change back and forth.
    observing: tokio::sync::Mutex<()>,
}

/// Records the weather at `game_s` for a region and emits `evt.weather.changed` for each
/// change since the last observation (see the module doc). Returns the weather now.
fn observe(
    tx: &mut Tx<'_>,
    region: &Region,
    chain: &Chain,
    max_catch_up: u32,
    game_s: i64,
) -> Result<Weather, Status> {
    let id = region.region_id.as_str();
    let ov = tx.get_msg::<OverrideState>(OVERRIDES, id.as_bytes())?;
    let obs = tx.get_msg::<Observed>(OBSERVED, id.as_bytes())?;
    let k = chain.step_of(game_s);
    let cursor = obs
        .as_ref()
        .filter(|o| o.region_version == region.version)
        .map(|o| (o.step, o.chain_condition));
    let first = match &obs {
        Some(o) if o.step < k => (o.step + 1).max(k - i64::from(max_catch_up.max(1)) + 1),
        _ => k,
    };
    let n = (k - first + 1) as usize;
    let conds = chain.walk(first, n, cursor);
    let mut last = obs.as_ref().map(|o| o.condition);
    let mut now = Weather::default();
    for (i, &c) in conds.iter().enumerate() {
        let step = first + i as i64;
        let t = if step == k {
            game_s
        } else {
            step * chain.step_seconds()
        };
        let w = effective(chain, id, step, c, ov.as_ref(), t);
        if let Some(old) = last
            && old != w.condition
        {
            let event = WeatherChangedEvent {
                region_id: id.to_string(),
                old_condition: old,
                new_condition: w.condition,
                game_seconds: t,
                weather: Some(w.clone()),
            };
            tx.emit(&event)?;
        }
        last = Some(w.condition);
        now = w;
    }
    tx.put_msg(
        OBSERVED,
        id.as_bytes(),
        &Observed {
            step: k,
            condition: now.condition,
            chain_condition: conds.last().copied().unwrap_or(region.initial_condition),
            region_version: region.version,
        },
    );
    Ok(now)
}

impl WeatherManager {
    /// The domain on a context, reading game time from `clock`.
    pub fn new(ctx: Ctx, config: WeatherManagerConfig, clock: Arc<dyn GameClock>) -> Self {
        WeatherManager {
            ctx,
            config,
            clock,
            observing: tokio::sync::Mutex::new(()),
        }
    }

    fn config(&self) -> &WeatherManagerConfig {
        &self.config
    }

    /// The calendar's days per season: as time-manager last said, else its default (only
    /// until the first clock reading; nothing is published before one).
    fn days_per_season(&self) -> u32 {
        self.clock
            .days_per_season()
            .unwrap_or(aicore_runtime::calendar::DEFAULT_DAYS_PER_SEASON)
    }

    fn region(&self, id: &str) -> Result<Region, Status> {
        validate::slug(id, "region_id", MAX_REGION_ID)?;
        self.ctx
            .store
            .get_msg::<Region>(REGIONS, id.as_bytes())?
            .ok_or_else(|| {
                Status::with_field(Code::NotFound, "region_id", format!("no region `{id}`"))
            })
    }

    /// The cursor stored for `region`, if it belongs to its current version.
    fn cursor(&self, region: &Region) -> Result<Option<(i64, i32)>, Status> {
        Ok(self
            .ctx
            .store
            .get_msg::<Observed>(OBSERVED, region.region_id.as_bytes())?
            .filter(|o| o.region_version == region.version)
            .map(|o| (o.step, o.chain_condition)))
    }

    /// The weather of `region` for `steps` steps from game second `game_s` (the first one
    /// at `game_s` itself, the others at their start).
    fn weather_from(
        &self,
        region: &Region,
        game_s: i64,
        steps: usize,
    ) -> Result<Vec<Weather>, Status> {
        let chain = Chain::new(region, self.days_per_season());
        let ov = self
            .ctx
            .store
            .get_msg::<OverrideState>(OVERRIDES, region.region_id.as_bytes())?;
        let k = chain.step_of(game_s);
        let conds = chain.walk(k, steps, self.cursor(region)?);
        Ok(conds
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let step = k + i as i64;
                let t = if i == 0 {
                    game_s
                } else {
                    step * chain.step_seconds()
                };
                effective(&chain, &region.region_id, step, c, ov.as_ref(), t)
            })
            .collect())
    }

    /// Observes every region at game second `game_s`: publishes the changes since the last
    /// observation (see the module doc). Returns how many events were emitted.
    pub async fn step(&self, game_s: i64) -> Result<usize, Status> {
        let dps = self.days_per_season();
        let max_catch_up = self.config().max_catch_up_steps;
        let batch = self.config().observe_batch.max(1);
        let mut from = Vec::new();
        let mut regions = 0;
        loop {
            let rows = self.ctx.store.scan(REGIONS, b"", &from, batch)?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            let ids: Vec<Vec<u8>> = rows.into_iter().map(|(k, _)| k).collect();
            let full = ids.len() == batch;
            regions += ids.len();
            self.ctx
                .store
                .write(move |tx| {
                    for id in ids {
                        // Read inside the transaction: a concurrent redefinition wins.
                        if let Some(region) = tx.get_msg::<Region>(REGIONS, &id)? {
                            let chain = Chain::new(&region, dps);
                            observe(tx, &region, &chain, max_catch_up, game_s)?;
                        }
                    }
                    Ok(())
                })
                .await?;
            if !full {
                break;
            }
        }
        Ok(regions)
    }

    /// The background task: polls game time and observes until `Ctx::shutdown`.
    pub async fn run(self: Arc<Self>) {
        let poll = Duration::from_millis(self.config().poll_interval_ms.max(1));
        let stop = self.ctx.shutdown.clone();
        let mut failing = false;
        while !stop.is_cancelled() {
            let r = {
                let _observing = self.observing.lock().await;
                match self.clock.now().await {
                    Ok(g) => self.step(g).await.map(|_| ()),
                    Err(e) => Err(e),
                }
            };
            match r {
                Ok(()) => failing = false,
                // Log once per outage (time-manager may be starting or served elsewhere).
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "weather-manager cannot observe the weather yet");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

impl WeatherManagerHandler for WeatherManager {
    async fn current(&self, request: Request<CurrentRequest>) -> Result<CurrentResponse, Status> {
        let region = self.region(&request.body.region_id)?;
        let game_s = self.clock.now().await?;
        let weather = self.weather_from(&region, game_s, 1)?.pop();
        Ok(CurrentResponse { weather })
    }

    async fn forecast(
        &self,
        request: Request<ForecastRequest>,
    ) -> Result<ForecastResponse, Status> {
        let req = request.body;
        let c = self.config();
        let steps = match req.steps {
            n if n < 0 => return Err(Status::invalid("steps", "must not be negative")),
            0 => c.default_forecast_steps.max(1),
            n => (n as u32).min(c.max_forecast_steps.max(1)),
        } as usize;
        let region = self.region(&req.region_id)?;
        let game_s = self.clock.now().await?;
        Ok(ForecastResponse {
            steps: self.weather_from(&region, game_s, steps)?,
        })
    }

    async fn set_override(
        &self,
        request: Request<SetOverrideRequest>,
    ) -> Result<SetOverrideResponse, Status> {
        let req = request.body;
        let mut region = self.region(&req.region_id)?;
        if !condition_ok(req.condition) {
            return Err(Status::invalid(
                "condition",
                "must be a weather condition other than UNSPECIFIED",
            ));
        }
        if let Some(t) = req.temperature_c
            && !(t.is_finite() && t.abs() <= MAX_TEMPERATURE_C)
        {
            return Err(Status::invalid(
                "temperature_c",
                format!("must be between -{MAX_TEMPERATURE_C} and {MAX_TEMPERATURE_C}"),
            ));
        }
        if !(req.intensity.is_finite() && (0.0..=1.0).contains(&req.intensity)) {
            return Err(Status::invalid("intensity", "must be 0 to 1"));
        }
        if req.duration_game_seconds < 0 {
            return Err(Status::invalid(
                "duration_game_seconds",
                "must not be negative (0 = until cleared)",
            ));
        }
        if req.reason.chars().count() > 512 {
            return Err(Status::invalid("reason", "must be at most 512 characters"));
        }
        let _observing = self.observing.lock().await;
        let game_s = self.clock.now().await?;
        let ov = OverrideState {
            condition: req.condition,
            temperature_c: req.temperature_c,
            intensity: if req.intensity == 0.0 {
                0.5
            } else {
                req.intensity
            },
            from_game_seconds: game_s,
            until_game_seconds: match req.duration_game_seconds {
                0 => 0,
                d => game_s.saturating_add(d),
            },
            reason: req.reason,
        };
        let dps = self.days_per_season();
        let max_catch_up = self.config().max_catch_up_steps;
        let weather = self
            .ctx
            .store
            .write(move |tx| {
                // The region as committed now (it may have been redefined meanwhile).
                if let Some(r) = tx.get_msg::<Region>(REGIONS, region.region_id.as_bytes())? {
                    region = r;
                } else {
                    return Err(Status::with_field(
                        Code::NotFound,
                        "region_id",
                        format!("no region `{}`", region.region_id),
                    ));
                }
                let chain = Chain::new(&region, dps);
                // Publish what changed up to now under the old override, then apply.
                observe(tx, &region, &chain, max_catch_up, game_s)?;
                tx.put_msg(OVERRIDES, region.region_id.as_bytes(), &ov);
                observe(tx, &region, &chain, max_catch_up, game_s)
            })
            .await?;
        Ok(SetOverrideResponse {
            weather: Some(weather),
        })
    }

    async fn clear_override(
        &self,
        request: Request<ClearOverrideRequest>,
    ) -> Result<ClearOverrideResponse, Status> {
        let req = request.body;
        let region = self.region(&req.region_id)?;
        let _observing = self.observing.lock().await;
        let game_s = self.clock.now().await?;
        let dps = self.days_per_season();
        let max_catch_up = self.config().max_catch_up_steps;
        let (weather, cleared) = self
            .ctx
            .store
            .write(move |tx| {
                let region = tx
                    .get_msg::<Region>(REGIONS, region.region_id.as_bytes())?
                    .ok_or_else(|| {
                        Status::with_field(Code::NotFound, "region_id", "no such region")
                    })?;
                let chain = Chain::new(&region, dps);
                observe(tx, &region, &chain, max_catch_up, game_s)?;
                let key = region.region_id.as_bytes();
                let cleared = tx
                    .get_msg::<OverrideState>(OVERRIDES, key)?
                    .is_some_and(|o| o.active_at(game_s));
                tx.delete(OVERRIDES, key);
                Ok((observe(tx, &region, &chain, max_catch_up, game_s)?, cleared))
            })
            .await?;
        Ok(ClearOverrideResponse {
            weather: Some(weather),
            cleared,
        })
    }

    async fn define_region(
        &self,
        request: Request<DefineRegionRequest>,
    ) -> Result<DefineRegionResponse, Status> {
        let req = request.body;
        let mut region = req
            .region
            .ok_or_else(|| Status::invalid("region", "is required"))?;
        validate_region(&region)?;
        // Game time is needed only to publish a change a redefinition causes; a region can
        // still be defined while time-manager is away (the background task catches up).
        let _observing = self.observing.lock().await;
        let game_s = self.clock.now().await.ok();
        let dps = self.days_per_season();
        let max_catch_up = self.config().max_catch_up_steps;
        let expected = req.expected_version;
        let now = self.ctx.now_ts();
        let region = self
            .ctx
            .store
            .write(move |tx| {
                let key = region.region_id.clone();
                let live = tx.get_msg::<Region>(REGIONS, key.as_bytes())?;
                match (expected, &live) {
                    (None, _) | (Some(0), None) => {}
                    (Some(n), Some(l)) if n == l.version => {}
                    (Some(0), Some(l)) => {
                        return Err(Status::conflict(format!(
                            "region `{key}` exists at version {}; expected_version 0 only creates",
                            l.version
                        )));
                    }
                    (Some(n), live) => {
                        return Err(Status::conflict(format!(
                            "region `{key}` is at version {}, not the expected {n}",
                            live.as_ref().map_or(0, |l| l.version)
                        )));
                    }
                }
                if let (Some(old), Some(g)) = (&live, game_s) {
                    // Close the old chain's account before the new one takes over.
                    observe(tx, old, &Chain::new(old, dps), max_catch_up, g)?;
                }
                region.version = live.as_ref().map_or(0, |l| l.version) + 1;
                region.updated_at = Some(now);
                tx.put_msg(REGIONS, key.as_bytes(), &region);
                if let Some(g) = game_s {
                    observe(tx, &region, &Chain::new(&region, dps), max_catch_up, g)?;
                }
                Ok(region)
            })
            .await?;
        Ok(DefineRegionResponse {
            region: Some(region),
        })
    }

    async fn list_regions(
        &self,
        request: Request<ListRegionsRequest>,
    ) -> Result<ListRegionsResponse, Status> {
        let req = request.body;
        let c = self.config();
        let limit = paging::page_size(req.page_size, c.default_page_size, c.max_page_size)?;
        let from = if req.page_token.is_empty() {
            Vec::new()
        } else {
            paging::decode_token(LIST_TOKEN, &req.page_token)?
        };
        let mut rows = self.ctx.store.scan(REGIONS, b"", &from, limit + 1)?;
        let next_page_token =
            paging::next_token(&mut rows, limit, LIST_TOKEN, |(k, _)| Some(k.clone()));
        let regions = rows
            .into_iter()
            .map(|(_, v)| aicore_runtime::store::decode(REGIONS, v))
            .collect::<Result<_, Status>>()?;
        Ok(ListRegionsResponse {
            regions,
            next_page_token,
        })
    }
}

impl aicore_runtime::Domain for WeatherManager {
    type Config = WeatherManagerConfig;

    /// The server, reading game time from time-manager over NATS, with its background
    /// task running until `ctx.shutdown`.
    fn build(
        ctx: &Ctx,
        config: &WeatherManagerConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let clock = Arc::new(OverNats {
            ctx: ctx.clone(),
            timeout: Duration::from_millis(config.clock_timeout_ms),
            days_per_season: Default::default(),
        });
        let wm = Arc::new(WeatherManager::new(ctx.clone(), config.clone(), clock));
        tokio::runtime::Handle::try_current()
            .map_err(|_| Status::internal("weather-manager needs a tokio runtime for its task"))?;
        ctx.spawn(wm.clone().run());
        Ok(Arc::new(
            aicore_proto::aicore::weather_manager::v1::WeatherManagerServer(wm),
        ))
    }
}

#[cfg(test)]
mod tests;
