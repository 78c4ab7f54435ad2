//! The writes that move game time: reading the clock inside a transaction, emitting the
//! ticks a step crossed, and firing the timers that came due (the due index and its
//! resume point).

use super::*;

pub(super) fn due_key(fire_at: i64, id: &str) -> Vec<u8> {
    let mut k = (fire_at.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn due_of(key: &[u8]) -> Option<(i64, &[u8])> {
    let (at, id) = key.split_at_checked(8)?;
    Some((u64::from_be_bytes(at.try_into().ok()?) as i64, id))
}

/// Values a transaction needs from the configuration.
#[derive(Clone, Copy)]
pub(super) struct Params {
    pub(super) default_scale: f64,
    pub(super) start_game_seconds: i64,
    pub(super) days_per_season: u32,
    pub(super) max_catch_up_ticks: u32,
    pub(super) fire_batch: usize,
}

impl Params {
    pub(super) fn of(c: &TimeManagerConfig) -> Params {
        Params {
            default_scale: c.default_scale,
            start_game_seconds: c.start_game_seconds,
            days_per_season: c.days_per_season,
            max_catch_up_ticks: c.max_catch_up_ticks,
            fire_batch: c.fire_batch.max(1),
        }
    }

    pub(super) fn new_clock(&self, real_ms: i64) -> ClockState {
        let scale = if self.default_scale.is_finite() && self.default_scale > 0.0 {
            self.default_scale.min(MAX_SCALE)
        } else {
            60.0
        };
        ClockState {
            anchor_real_ms: real_ms,
            anchor_game_ms: self
                .start_game_seconds
                .clamp(0, MAX_GAME_SECONDS)
                .saturating_mul(1000),
            scale,
            paused: false,
            version: 0,
        }
    }

    pub(super) fn clock_proto(&self, c: &ClockState, real_ms: i64) -> Clock {
        Clock {
            game_time: Some(game_time(c.game_seconds_at(real_ms), self.days_per_season)),
            real_time: Some(aicore_runtime::timestamp(
                UNIX_EPOCH + Duration::from_millis(real_ms.max(0) as u64),
            )),
            scale: c.scale,
            paused: c.paused,
            version: c.version,
            days_per_season: self.days_per_season,
        }
    }
}

/// The clock in `tx`, created (anchored at `real_ms`) when the world has none yet.
pub(super) fn clock_in(tx: &mut Tx<'_>, p: &Params, real_ms: i64) -> Result<ClockState, Status> {
    match tx.get_msg::<ClockState>(CLOCK, CLOCK_KEY)? {
        Some(c) => Ok(c),
        None => {
            let c = p.new_clock(real_ms);
            tx.put_msg(CLOCK, CLOCK_KEY, &c);
            Ok(c)
        }
    }
}

/// Emits the ticks for hours crossed up to `game_s` (see the module doc).
pub(super) fn tick(tx: &mut Tx<'_>, p: &Params, game_s: i64) -> Result<u32, Status> {
    let hour = game_s.div_euclid(HOUR_SECONDS);
    let last = match tx.get_msg::<TickerState>(TICKER, TICKER_KEY)? {
        Some(t) => t.last_hour,
        // A new world starts in an hour already begun: no tick for it.
        None => {
            tx.put_msg(TICKER, TICKER_KEY, &TickerState { last_hour: hour });
            return Ok(0);
        }
    };
    if hour == last {
        return Ok(0);
    }
    let mut ticks = 0;
    if hour > last {
        let first = (last + 1).max(hour - i64::from(p.max_catch_up_ticks) + 1);
        for h in first..=hour {
            let event = TickEvent {
                game_time: Some(game_time(h * HOUR_SECONDS, p.days_per_season)),
                catch_up: h < hour,
            };
            tx.emit(&event)?;
            ticks += 1;
        }
    }
    // Backwards (the real clock stepped back): no ticks, follow it.
    tx.put_msg(TICKER, TICKER_KEY, &TickerState { last_hour: hour });
    Ok(ticks)
}

/// Where the due table's live keys start, at the latest (see the module doc), from the
/// `due_from` row as read (a store without one: the table's start).
pub(super) fn due_start(row: Option<Bytes>) -> Vec<u8> {
    row.map(|b| b.to_vec()).unwrap_or_default()
}

/// [`due_start`] as a transaction sees it.
pub(super) fn due_from(tx: &Tx<'_>) -> Result<Vec<u8>, Status> {
    Ok(due_start(tx.get(TICKER, DUE_FROM)?))
}

/// Adds `key` to the due table, below which the scans then start if need be.
pub(super) fn put_due(tx: &mut Tx<'_>, key: Vec<u8>) -> Result<(), Status> {
    if key < due_from(tx)? {
        tx.put(TICKER, DUE_FROM, key.clone());
    }
    tx.put(DUE, &key, Vec::new());
    Ok(())
}

/// Fires up to `fire_batch` timers due at or before `game_s`.
pub(super) fn fire_due(tx: &mut Tx<'_>, p: &Params, game_s: i64) -> Result<u32, Status> {
    let mut fired = 0;
    let from = due_from(tx)?;
    // Every key this step deletes is below the rest and below the ones it adds (a
    // repeating timer's next occurrence is after `game_s`): the next scan starts at it.
    let mut last = None;
    for (key, _) in tx.scan(DUE, b"", &from, p.fire_batch)? {
        let Some((fire_at, id)) = due_of(&key) else {
            tx.delete(DUE, &key);
            last = Some(key);
            continue;
        };
        if fire_at > game_s {
            break;
        }
        let id = id.to_vec();
        tx.delete(DUE, &key);
        last = Some(key);
        let Some(mut timer) = tx.get_msg::<Timer>(TIMERS, &id)? else {
            continue;
        };
        let event = ScheduledEvent {
            timer: Some(timer.clone()),
            fired_at: Some(game_time(game_s, p.days_per_season)),
        };
        tx.emit(&event)?;
        fired += 1;
        let every = timer.repeat_every_seconds;
        if every > 0 {
            let next = fire_at + ((game_s - fire_at) / every + 1) * every;
            timer.fire_at = Some(game_time(next, p.days_per_season));
            tx.put_msg(TIMERS, &id, &timer);
            put_due(tx, due_key(next, &timer.schedule_id))?;
        } else {
            tx.delete(TIMERS, &id);
        }
    }
    if let Some(last) = last {
        tx.put(TICKER, DUE_FROM, last);
    }
    Ok(fired)
}
