//! Where the game time comes from: time-manager over NATS in production ([`OverNats`]), a
//! [`ManualGameClock`] in tests.

use super::*;

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
    pub(super) ctx: Ctx,
    pub(super) timeout: Duration,
    /// The calendar's days per season from the last answer (0 = none yet).
    pub(super) days_per_season: std::sync::atomic::AtomicU32,
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
