//! What npc-behavior asks of other domains ([`Minds`]): the game time from time-manager
//! and dialogue lines from ai-integration; over NATS in production ([`OverNats`]), a
//! scripted stand-in in the unit tests.

use aicore_proto::{CallOptions, Status};
use aicore_runtime::Ctx;
use futures::future::BoxFuture;

/// A line of dialogue.
#[derive(Debug, Clone)]
pub struct Line {
    /// The text.
    pub text: String,
    /// From the offline provider.
    pub offline: bool,
}

/// What npc-behavior asks of other domains: time-manager and ai-integration over NATS.
pub trait Minds: Send + Sync + 'static {
    /// The game time now, in game seconds since the epoch.
    fn game_seconds(&self, options: CallOptions) -> BoxFuture<'_, Result<i64, Status>>;
    /// A line of dialogue from a system prompt and a user message (JSON data), for
    /// `player_id`'s budget.
    fn line(
        &self,
        system: String,
        prompt: String,
        player_id: String,
        max_tokens: u32,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Line, Status>>;
}

/// The production [`Minds`]: the SDK client.
pub struct OverNats {
    pub(super) ctx: Ctx,
}

impl Minds for OverNats {
    fn game_seconds(&self, options: CallOptions) -> BoxFuture<'_, Result<i64, Status>> {
        use aicore_proto::aicore::time_manager::v1::{NowRequest, TimeManagerClient};
        Box::pin(async move {
            let client = TimeManagerClient::new(self.ctx.client()?.clone());
            let r = client.now(NowRequest::default(), &options).await?;
            r.clock
                .and_then(|c| c.game_time)
                .map(|t| t.seconds)
                .ok_or_else(|| Status::internal("time-manager answered no game time"))
        })
    }

    fn line(
        &self,
        system: String,
        prompt: String,
        player_id: String,
        max_tokens: u32,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Line, Status>> {
        use aicore_proto::aicore::ai_integration::v1::{
            AiIntegrationClient, CompleteRequest, GenerationParams,
        };
        Box::pin(async move {
            let client = AiIntegrationClient::new(self.ctx.client()?.clone());
            let r = client
                .complete(
                    CompleteRequest {
                        prompt,
                        system,
                        params: Some(GenerationParams {
                            max_tokens,
                            ..Default::default()
                        }),
                        player_id,
                        ..Default::default()
                    },
                    &options,
                )
                .await?;
            Ok(Line {
                text: r.text.trim().to_string(),
                offline: r.served_by.is_some_and(|s| s.offline),
            })
        })
    }
}
