//! What conditions read from other domains: the [`World`] seam (world-state facts,
//! time-manager's game clock, weather-manager's weather) and [`OverNats`], its
//! production form over the SDK client. Unit tests substitute a scripted world.

use aicore_proto::aicore::world_state::v1::Fact;
use aicore_proto::{CallOptions, Status};
use aicore_runtime::Ctx;
use futures::future::BoxFuture;

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
    pub(super) ctx: Ctx,
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
