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
pub use aicore_proto::internal::weather_manager::{Observed, OverrideState};
use aicore_proto::{CallOptions, Code, Request, Status};
use futures::future::BoxFuture;

use aicore_runtime::outbox::Emit;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, validate};

mod chain;
mod clock;
mod handlers;
mod regions;

pub use chain::*;
pub use clock::*;
pub use regions::*;

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

/// When a stored override applies (a trait: the record is generated in `aicore_proto`).
trait OverrideWindow {
    /// Whether the override covers game second `t`.
    fn active_at(&self, t: i64) -> bool;
}

impl OverrideWindow for OverrideState {
    fn active_at(&self, t: i64) -> bool {
        self.from_game_seconds <= t && (self.until_game_seconds == 0 || t < self.until_game_seconds)
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
