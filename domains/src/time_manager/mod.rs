//! time-manager: the game clock and game-time timers.
//!
//! The clock is an anchor — a real instant and the game time at that instant — plus a
//! scale (game seconds per real second) and a paused flag, stored in one row. Game time at
//! any real instant is `anchor_game + (real - anchor_real) × scale` (or `anchor_game` while
//! paused), so it needs no ticking to be right, survives restarts, and counts the time the
//! appliance was down as elapsed (as the contract says) unless paused. Every change
//! (SetScale, Pause, Resume, SetTime) first re-anchors at the current instant, so game time
//! is continuous across it (SetTime aside, which jumps on purpose), bumps the clock's
//! version and emits `evt.time.clock_changed` in the same transaction.
//!
//! A background task ([`TimeManager::run`], ended by `Ctx::shutdown`) calls
//! [`TimeManager::step`] every `poll_interval_ms` (and at once after a Schedule). One step
//! is one store transaction that:
//! - emits `evt.time.tick` for each game-hour boundary crossed since the last step; after
//!   downtime (or a long stall) at most `max_catch_up_ticks` of them — the latest hours,
//!   flagged `catch_up` — because a burst of stale ticks helps no consumer, while the
//!   hour index in each tick lets one notice the gap;
//! - fires every due timer: emits `evt.time.scheduled` and deletes the timer (or moves a
//!   repeating one to its next occurrence after now: missed repetitions coalesce into one
//!   firing) in the same transaction, so a crash can neither fire a timer twice nor lose
//!   it: timers due during downtime fire at the first step after start. More than
//!   `fire_batch` due timers take several transactions, each complete.
//!
//! SetTime publishes no ticks for the hours it skips (the ticker jumps with it) but fires,
//! in its own transaction, the timers that become due. Several replicas on one store are
//! safe: the transaction that deletes a timer is the only one that fires it.
//!
//! Calendar (see [`game_time`]): a day is 86 400 game seconds, a season
//! `days_per_season` days (spring, summer, autumn, winter from day 0), a year four seasons.
//!
//! Tables:
//! - `time_manager.clock`: `clock` → [`ClockState`].
//! - `time_manager.ticker`: `ticker` → [`TickerState`], the last game hour ticked;
//!   `due_from` → a due-table key no live key is below (where a step's scan starts: a
//!   fired timer's row stays behind as a deletion in the store's memory layer until the
//!   next flush, so scanning from the table's start would step over every timer fired
//!   since; a Schedule below it moves it down, in the same transaction).
//! - `time_manager.timers`: schedule id → `Timer`.
//! - `time_manager.due`: big-endian fire-at game second ++ schedule id → empty: the timers
//!   by due time, so a step reads only the due ones and ListSchedules pages soonest first.
//! - `time_manager.idempotency`: replies of Schedule kept for their idempotency keys.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aicore_proto::aicore::time_manager::v1::{
    CancelScheduleRequest, CancelScheduleResponse, Clock, ClockChangedEvent, GameTime,
    ListSchedulesRequest, ListSchedulesResponse, NowRequest, NowResponse, PauseRequest,
    PauseResponse, ResumeRequest, ResumeResponse, ScheduleRequest, ScheduleResponse,
    ScheduledEvent, Season, SetScaleRequest, SetScaleResponse, SetTimeRequest, SetTimeResponse,
    TickEvent, TimeManagerHandler, Timer,
};
pub use aicore_proto::internal::time_manager::{ClockState, TickerState};
use aicore_proto::{Code, Metadata, Request, Status};
use bytes::Bytes;

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::outbox::Emit;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, calendar, paging};

mod handlers;
mod ticks;

use handlers::*;
use ticks::*;

const CLOCK: &str = "time_manager.clock";
const CLOCK_KEY: &[u8] = b"clock";
const TICKER: &str = "time_manager.ticker";
const TICKER_KEY: &[u8] = b"ticker";
const DUE_FROM: &[u8] = b"due_from";
const TIMERS: &str = "time_manager.timers";
const DUE: &str = "time_manager.due";
const IDEMPOTENCY: Idempotency = Idempotency::new("time_manager.idempotency");
const LIST_TOKEN: u8 = b'T';

/// Published once per game hour boundary crossed (payload: [`TickEvent`]).
pub const TICK_SUBJECT: &str = "evt.time.tick";
/// Published when a timer fires (payload: [`ScheduledEvent`]).
pub const SCHEDULED_SUBJECT: &str = "evt.time.scheduled";
/// Published on every clock change (payload: [`ClockChangedEvent`]).
pub const CLOCK_CHANGED_SUBJECT: &str = "evt.time.clock_changed";

pub use aicore_runtime::calendar::{DAY_SECONDS, HOUR_SECONDS};
/// Largest game time SetTime and Schedule accept (about 31 700 game years), so game
/// milliseconds never overflow.
pub const MAX_GAME_SECONDS: i64 = 1_000_000_000_000;
/// Largest scale (the contract's bound).
pub const MAX_SCALE: f64 = 100_000.0;
/// Largest timer payload (64 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
const MAX_NAME_CHARS: usize = 128;
const MIN_REPEAT_SECONDS: i64 = 60;

/// Configuration of time-manager (`[domains.time_manager]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeManagerConfig {
    /// Game seconds per real second of a new world's clock (> 0, at most 100000); SetScale
    /// changes it later. 60 = one game hour per real minute.
    pub default_scale: f64,
    /// Game time of a new world's clock, in game seconds since day 0 00:00:00.
    pub start_game_seconds: i64,
    /// Game days per season (spring, summer, autumn, winter; a year is four seasons).
    /// weather-manager reads the same value for its seasons.
    pub days_per_season: u32,
    /// How often the ticker steps (emits ticks, fires due timers), in real milliseconds.
    /// A timer fires at most this late (plus the store's commit time).
    pub poll_interval_ms: u64,
    /// Most `evt.time.tick` one step emits for hours crossed at once (after downtime or a
    /// stall); older hours are skipped. Timers are never skipped.
    pub max_catch_up_ticks: u32,
    /// Most timers one step transaction fires; more fire in further transactions.
    pub fire_batch: usize,
    /// Page size of ListSchedules when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of ListSchedules.
    pub max_page_size: u32,
}

impl Default for TimeManagerConfig {
    fn default() -> Self {
        TimeManagerConfig {
            default_scale: 60.0,
            start_game_seconds: 6 * HOUR_SECONDS,
            days_per_season: calendar::DEFAULT_DAYS_PER_SEASON,
            poll_interval_ms: 200,
            max_catch_up_ticks: 24,
            fire_batch: 256,
            default_page_size: 50,
            max_page_size: 500,
        }
    }
}

/// Reading and moving a stored [`ClockState`] (a trait: the record is generated in
/// `aicore_proto`).
pub trait GameClockMath {
    /// Game milliseconds at real instant `real_ms` (never negative).
    fn game_ms_at(&self, real_ms: i64) -> i64;
    /// Game seconds at real instant `real_ms`.
    fn game_seconds_at(&self, real_ms: i64) -> i64;
    /// Moves the anchor to `real_ms` without changing game time there.
    fn reanchor(&mut self, real_ms: i64);
}

impl GameClockMath for ClockState {
    fn game_ms_at(&self, real_ms: i64) -> i64 {
        if self.paused {
            return self.anchor_game_ms.max(0);
        }
        let elapsed = real_ms.saturating_sub(self.anchor_real_ms) as f64 * self.scale;
        self.anchor_game_ms
            .saturating_add(elapsed.round() as i64)
            .max(0)
    }

    fn game_seconds_at(&self, real_ms: i64) -> i64 {
        self.game_ms_at(real_ms).div_euclid(1000)
    }

    fn reanchor(&mut self, real_ms: i64) {
        self.anchor_game_ms = self.game_ms_at(real_ms);
        self.anchor_real_ms = real_ms;
    }
}

/// What one [`TimeManager::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// `evt.time.tick` events emitted.
    pub ticks: u32,
    /// Timers fired.
    pub fired: u32,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_millis().min(i64::MAX as u128) as i64),
    }
}

/// A game second broken down by the calendar (see the module doc).
pub fn game_time(seconds: i64, days_per_season: u32) -> GameTime {
    let s = seconds.max(0);
    let dps = i64::from(days_per_season.max(1));
    let day = s / DAY_SECONDS;
    let sod = s % DAY_SECONDS;
    GameTime {
        seconds: s,
        day,
        hour: (sod / HOUR_SECONDS) as i32,
        minute: (sod % HOUR_SECONDS / 60) as i32,
        second: (sod % 60) as i32,
        year: day / (dps * 4),
        season: Season::try_from(calendar::season_at(s, days_per_season))
            .unwrap_or(Season::Unspecified) as i32,
        day_of_season: (day % dps) as i32,
    }
}

/// The time-manager domain.
pub struct TimeManager {
    ctx: Ctx,
    config: TimeManagerConfig,
    /// Wakes the ticker early (after a Schedule, so a past-due timer fires promptly).
    wake: tokio::sync::Notify,
}

impl TimeManager {
    /// The domain on a context (without its ticker: see its [`aicore_runtime::Domain`]
    /// build and [`TimeManager::run`]).
    pub fn new(ctx: Ctx, config: TimeManagerConfig) -> Self {
        TimeManager {
            ctx,
            config,
            wake: tokio::sync::Notify::new(),
        }
    }

    fn config(&self) -> &TimeManagerConfig {
        &self.config
    }

    fn params(&self) -> Params {
        Params::of(self.config())
    }

    /// One step of the ticker at real instant `now`: emits the ticks crossed and fires
    /// every due timer, each batch in one transaction (see the module doc).
    pub async fn step(&self, now: SystemTime) -> Result<StepReport, Status> {
        let p = self.params();
        let real_ms = unix_ms(now);
        let mut report = StepReport::default();
        let mut first = true;
        loop {
            let (ticks, fired) = self
                .ctx
                .store
                .write(move |tx| {
                    let clock = clock_in(tx, &p, real_ms)?;
                    let game_s = clock.game_seconds_at(real_ms);
                    let ticks = if first { tick(tx, &p, game_s)? } else { 0 };
                    Ok((ticks, fire_due(tx, &p, game_s)?))
                })
                .await?;
            first = false;
            report.ticks += ticks;
            report.fired += fired;
            if (fired as usize) < p.fire_batch {
                return Ok(report);
            }
        }
    }

    /// The ticker: steps every `poll_interval_ms` (or when woken) until `Ctx::shutdown`.
    pub async fn run(self: Arc<Self>) {
        let poll = Duration::from_millis(self.config().poll_interval_ms.max(1));
        let stop = self.ctx.shutdown.clone();
        while !stop.is_cancelled() {
            if let Err(e) = self.step(self.ctx.clock.now()).await {
                tracing::warn!(error = %e, "time-manager step failed; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// The clock, created on first use.
    async fn clock(&self) -> Result<ClockState, Status> {
        if let Some(c) = self.ctx.store.get_msg::<ClockState>(CLOCK, CLOCK_KEY)? {
            return Ok(c);
        }
        let p = self.params();
        let real_ms = unix_ms(self.ctx.clock.now());
        self.ctx
            .store
            .write(move |tx| clock_in(tx, &p, real_ms))
            .await
    }

    /// Applies `change` to the clock re-anchored at now; when it reports a change, bumps
    /// the version, emits the event and (for a jump) moves the ticker and fires due
    /// timers, all in one transaction. Returns the clock and the timers fired.
    async fn change_clock(
        &self,
        meta: &Metadata,
        name: &'static str,
        reason: String,
        change: impl FnOnce(&mut ClockState) -> bool + Send + 'static,
    ) -> Result<(Clock, u32), Status> {
        check_reason(&reason)?;
        let p = self.params();
        let real_ms = unix_ms(self.ctx.clock.now());
        let changed_by = meta
            .caller
            .as_ref()
            .map(|c| c.account_id.clone())
            .unwrap_or_default();
        let jump = name == "set_time";
        let (clock, fired) = self
            .ctx
            .store
            .write(move |tx| {
                let mut c = clock_in(tx, &p, real_ms)?;
                c.reanchor(real_ms);
                if !change(&mut c) {
                    return Ok((p.clock_proto(&c, real_ms), 0));
                }
                c.version += 1;
                tx.put_msg(CLOCK, CLOCK_KEY, &c);
                let clock = p.clock_proto(&c, real_ms);
                let event = ClockChangedEvent {
                    clock: Some(clock),
                    change: name.to_string(),
                    reason,
                    changed_by,
                };
                tx.emit(&event)?;
                let mut fired = 0;
                if jump {
                    let game_s = c.game_seconds_at(real_ms);
                    let last_hour = game_s.div_euclid(HOUR_SECONDS);
                    tx.put_msg(TICKER, TICKER_KEY, &TickerState { last_hour });
                    fired = fire_due(tx, &p, game_s)?;
                }
                Ok((clock, fired))
            })
            .await?;
        if fired as usize >= p.fire_batch {
            // The ticker fires the rest.
            self.wake.notify_one();
        }
        Ok((clock, fired))
    }
}

impl aicore_runtime::Domain for TimeManager {
    type Config = TimeManagerConfig;

    /// The server, with the ticker running until `ctx.shutdown`.
    fn build(
        ctx: &Ctx,
        config: &TimeManagerConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let tm = Arc::new(TimeManager::new(ctx.clone(), config.clone()));
        tokio::runtime::Handle::try_current()
            .map_err(|_| Status::internal("time-manager needs a tokio runtime for its ticker"))?;
        ctx.spawn(tm.clone().run());
        Ok(Arc::new(
            aicore_proto::aicore::time_manager::v1::TimeManagerServer(tm),
        ))
    }
}

#[cfg(test)]
mod tests;
