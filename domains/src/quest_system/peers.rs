//! What quest-system asks of other domains, behind traits so tests can stand in: payment
//! credits rewards ([`RewardSink`]), world-state answers facts ([`WorldFacts`]); [`OverNats`]
//! asks them over NATS on the domain's own authority.

use super::*;

/// One reward credit, as sent to payment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// Who is paid.
    pub player_id: String,
    /// In which currency.
    pub currency: String,
    /// How much (> 0).
    pub amount: i64,
    /// For the ledger.
    pub reason: String,
    /// Makes the credit exactly-once.
    pub idempotency_key: String,
}

/// Where rewards go: payment over NATS in production, a recorder in tests.
pub trait RewardSink: Send + Sync + 'static {
    /// Credits one grant and returns its payment transaction id. Must be idempotent by
    /// `grant.idempotency_key` (the same key returns the first transaction).
    fn credit(&self, grant: Grant, options: CallOptions) -> BoxFuture<'_, Result<String, Status>>;
}

/// Where prerequisite facts come from: world-state over NATS in production.
pub trait WorldFacts: Send + Sync + 'static {
    /// The live fact under `key`, or `None` when there is none.
    fn get(&self, key: String, options: CallOptions)
    -> BoxFuture<'_, Result<Option<Fact>, Status>>;
}

/// The production dependencies: payment and world-state through the SDK client.
pub struct OverNats {
    pub(super) ctx: Ctx,
}

impl RewardSink for OverNats {
    fn credit(&self, grant: Grant, options: CallOptions) -> BoxFuture<'_, Result<String, Status>> {
        use aicore_proto::aicore::payment::v1::{CreditRequest, PaymentClient};
        Box::pin(async move {
            let client = PaymentClient::new(self.ctx.client()?.clone());
            let r = client
                .credit(
                    CreditRequest {
                        player_id: grant.player_id,
                        currency: grant.currency,
                        amount: grant.amount,
                        reason: grant.reason,
                        idempotency_key: grant.idempotency_key,
                    },
                    &options,
                )
                .await?;
            Ok(r.transaction.map(|t| t.transaction_id).unwrap_or_default())
        })
    }
}

impl WorldFacts for OverNats {
    fn get(
        &self,
        key: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Option<Fact>, Status>> {
        Box::pin(async move { aicore_runtime::facts::fetch(&self.ctx, key, &options).await })
    }
}

/// Options for calls the domain makes on its own authority: the caller's deadline and
/// trace, but not the caller (a player may not call payment.Credit; quest-system may).
pub(super) fn own_authority(meta: &Metadata) -> CallOptions {
    CallOptions {
        caller: None,
        ..CallOptions::from_meta(meta)
    }
}
