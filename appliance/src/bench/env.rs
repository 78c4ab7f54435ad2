//! The two nats-servers every row runs on (the default mTLS one and a plaintext one),
//! connections as the appliance's identities, the raw echo baseline, and serving a
//! registered domain on a server.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use aicore_domains::registry;
use aicore_runtime::metrics::Registry;
use aicore_runtime::serve::{self, ServeOptions};
use aicore_runtime::store::Store;
use aicore_runtime::{Ctx, SystemClock};

use crate::config::Config;
use crate::security::ClientTls;
use crate::supervisor::connect;

use super::load::*;
use super::*;

/// One of the two nats-servers every row runs on: the default configuration (mutual TLS,
/// pinned certificates, accounts, least-privilege users: what `aicore run` runs) or
/// plaintext with no users (what `--insecure-dev` runs). Every connection of a row
/// presents the identity `aicore run` would: domains serve as `domains`, loads call as
/// `gateway`.
#[derive(Clone)]
pub(super) struct Env {
    /// `mTLS` or `plaintext`.
    pub(super) label: &'static str,
    pub(super) url: String,
    /// The certificate directory, on the TLS server.
    pub(super) certs: Option<std::path::PathBuf>,
    /// Where the domains and gateways of this server's rows record, as `aicore run`'s
    /// do (the `metrics` rows switch it off and on).
    pub(super) metrics: Arc<Registry>,
}

impl Env {
    /// The identity of `principal` on this server (none in plaintext).
    pub(super) fn tls(&self, principal: &str) -> Option<ClientTls> {
        self.certs.as_ref().map(|d| ClientTls::in_dir(d, principal))
    }

    /// A connection as `principal`.
    pub(super) async fn connect(&self, principal: &str, name: &str) -> Result<async_nats::Client> {
        connect(&self.url, self.tls(principal).as_ref(), principal, name).await
    }
}

/// The raw request/reply subject: under `svc.`, so the `domains` identity may serve it
/// and the `gateway` identity call it on the TLS server.
pub(super) const ECHO_SUBJECT: &str = "svc.bench.v1.echo";

/// Starts the raw baseline on `env`: an echo responder on its own connection (as
/// `domains`, handling in order) and the load connection (as `gateway`).
pub(super) async fn baseline(
    env: &Env,
    payload: &Bytes,
) -> Result<(Baseline, tokio::task::JoinHandle<()>)> {
    let responder = env.connect("domains", "bench-echo").await?;
    let mut sub = responder
        .queue_subscribe(ECHO_SUBJECT, "bench".into())
        .await?;
    let echo_nats = responder.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = echo_nats.publish(reply, m.payload).await;
            }
        }
    });
    responder.flush().await?;
    let load = env.connect("gateway", "bench-load").await?;
    let base = Baseline {
        nats: load,
        payload: payload.clone(),
    };
    ready("the raw echo", || base.op()(0, 0)).await?;
    Ok((base, echo))
}

/// The raw baseline on the TLS server interleaved with the plaintext one, slice by slice:
/// the cost of TLS and permission checks on a bare request/reply, and the link between
/// the two runs' ratios (see [`print_table`]).
pub(super) async fn raw_tls_vs_plaintext(
    tls: &Baseline,
    plain: &Baseline,
    args: &BenchArgs,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &c in &args.concurrency {
        cells.extend(measure_rows(plain, None, c, args.seconds, vec![(RAW_TLS, tls.op())]).await);
    }
    cells
}

/// Serves domain `name` (as registered) on its own connection over `store`.
pub(super) async fn serve_domain(
    env: &Env,
    name: &str,
    store: Store,
    config: &Config,
    stop: CancellationToken,
) -> Result<serve::ServiceHandle> {
    let nats = env.connect("domains", "bench-domains").await?;
    let ctx = Ctx {
        store,
        clock: Arc::new(SystemClock),
        client: Some(aicore_sdk::Client::new(nats.clone(), Default::default())),
        idempotency_ttl: std::time::Duration::from_secs(config.domains.idempotency_ttl_secs),
        tasks: Default::default(),
        shutdown: stop.child_token(),
        data_dir: None,
    };
    let spec = registry::find(name).with_context(|| format!("{name} is not registered"))?;
    let dispatch = (spec.build)(&ctx, &config.domains).map_err(|e| anyhow::anyhow!("{e}"))?;
    let options = ServeOptions {
        metrics: Some(env.metrics.clone()),
        ..ServeOptions::default()
    };
    let handle = serve::serve(nats.clone(), dispatch, options, stop)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    nats.flush().await?;
    Ok(handle)
}
