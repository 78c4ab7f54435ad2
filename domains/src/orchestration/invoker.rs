//! How a step reaches its domain: the [`Invoker`] seam (one encoded request to a domain
//! RPC) and its production implementation, [`OverNats`], the SDK client. Unit tests put a
//! stand-in behind the seam.

use aicore_proto::{CallOptions, MethodInfo, Status};
use aicore_runtime::Ctx;
use bytes::Bytes;
use futures::future::BoxFuture;

/// Sends one encoded request to a domain RPC: the domains over NATS in production
/// ([`OverNats`]), a stand-in in unit tests.
pub trait Invoker: Send + Sync + 'static {
    /// Calls `method` with `body` and `options` (the run's caller, the attempt's timeout).
    fn call(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: CallOptions,
    ) -> BoxFuture<'static, Result<Bytes, Status>>;
}

/// The production [`Invoker`]: the SDK client over NATS.
pub struct OverNats {
    pub(super) ctx: Ctx,
}

impl Invoker for OverNats {
    fn call(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: CallOptions,
    ) -> BoxFuture<'static, Result<Bytes, Status>> {
        use aicore_proto::Transport;
        let client = self.ctx.client().cloned();
        Box::pin(async move { client?.unary(method, body, &options).await })
    }
}
