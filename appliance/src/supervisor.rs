//! `aicore run`: start-up and ordered teardown, top to bottom. Start: open the store,
//! start (or join) NATS, connect, serve the selected domains, start the HTTP gateway,
//! announce readiness. Run until SIGTERM/SIGINT or until the nats-server child
//! crash-loops. Teardown, in order: drain the gateway (no new HTTP requests, in-flight ones
//! finish, streams end), stop taking requests and finish the in-flight ones (each domain drains), stop the outbox
//! relay (after a last drain) and the dead-letter task, flush the
//! NATS connection, stop nats-server, close the store (its queued writes commit first).
//! Every piece takes a child of one cancellation token, so nothing outlives the process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use aicore_domains::runtime::{self, ServeOptions};
use aicore_domains::store::{Store, StoreOptions};
use aicore_domains::streams::ensure_streams;
use aicore_domains::{Ctx, SystemClock};
use aicore_domains::{event_bus, outbox, registry};

use crate::config::Config;
use crate::gateway;
use crate::nats_child::{NatsChild, NatsChildConfig, resolve_binary};

/// Connects to NATS with the reconnect policy the appliance wants: keep trying forever,
/// quickly, since the child is restarted within a second or two.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// Runs the appliance until a signal or a fatal failure.
pub async fn run(mut config: Config) -> Result<()> {
    let domains = config.served_domains()?;
    let http_domains = config.http_domains()?;
    if domains.is_empty() {
        bail!("no domain selected to serve");
    }
    config.pick_free_ports()?;
    let shutdown = CancellationToken::new();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;

    // 1. Store.
    let store_path = config.data_dir.join(&config.store.file);
    let store = Store::open(
        &store_path,
        StoreOptions {
            cache_bytes: config.store.cache_bytes,
            max_batch: config.store.max_batch,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("opening store {}", store_path.display()))?;

    // 2. NATS: the child, or an existing server.
    let child = match &config.nats.url {
        Some(url) => {
            tracing::info!(%url, "using an existing NATS server; no child started");
            None
        }
        None => {
            let binary = resolve_binary(config.nats.server_bin.as_deref())?;
            let cfg = NatsChildConfig {
                binary,
                host: config.nats.host.clone(),
                port: config.nats.port,
                monitor_port: config.nats.monitor_port,
                store_dir: config.data_dir.join("jetstream"),
                config_path: config.data_dir.join("nats-server.conf"),
                sync_interval: config.nats.sync_interval.clone(),
                max_payload: config.nats.max_payload,
                max_memory_store: config.nats.max_memory_store,
                max_file_store: config.nats.max_file_store,
                max_restarts: config.nats.max_restarts,
                restart_window: config.restart_window(),
            };
            Some(NatsChild::start(cfg, shutdown.child_token()).await?)
        }
    };
    let url = child
        .as_ref()
        .map(NatsChild::client_url)
        .unwrap_or_else(|| config.nats_url());
    let nats = connect(&url, "aicore-domains").await?;

    // Event streams first, so a domain's first event has somewhere to go; then the outbox
    // relay and the dead-letter task, which outlive the domains in teardown.
    let js = async_nats::jetstream::new(nats.clone());
    ensure_streams(&js, &config.domains.event_bus)
        .await
        .map_err(|e| anyhow::anyhow!("creating the JetStream streams: {e}"))?;
    let events_stop = shutdown.child_token();
    let relay = tokio::spawn(outbox::run_relay(
        store.clone(),
        js.clone(),
        events_stop.child_token(),
    ));
    let dead_letters = tokio::spawn(event_bus::run_dead_letters(js, events_stop.child_token()));

    // 3. Domains.
    let domains_stop = shutdown.child_token();
    let ctx = Ctx {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        client: Some(aicore_sdk::Client::new(nats.clone(), Default::default())),
        config: Arc::new(config.domains.clone()),
        // Domain background tasks end with the domains, before the store closes.
        shutdown: domains_stop.child_token(),
    };
    let mut served = Vec::new();
    for name in &domains {
        let spec = registry::find(name).context("domain listed but not registered")?;
        let dispatch = (spec.build)(&ctx).map_err(|e| anyhow::anyhow!("building {name}: {e}"))?;
        let handle = runtime::serve(
            nats.clone(),
            dispatch,
            ServeOptions {
                max_in_flight: config.domains.max_in_flight,
                ..ServeOptions::default()
            },
            domains_stop.child_token(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("serving {name}: {e}"))?;
        served.push(handle);
    }
    nats.flush().await.context("flushing NATS subscriptions")?;

    // 3b. The HTTP gateway, on its own NATS connection, once the domains answer.
    let gateway = match config.http.enabled {
        true => Some(
            gateway::start(
                &config.http,
                config.nats.max_payload,
                &url,
                http_domains,
                shutdown.child_token(),
            )
            .await?,
        ),
        false => None,
    };
    tracing::info!(nats = %url, domains = %domains.join(","), data_dir = %config.data_dir.display(), "aicore ready");

    // 4. Run until a signal or a fatal failure.
    let failed = child.as_ref().map(|c| c.failed());
    let fatal = async {
        match failed {
            Some(f) => Some(f.await),
            None => std::future::pending().await,
        }
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: draining"); Ok(()) }
        e = fatal => Err(e.unwrap_or_else(|| anyhow::anyhow!("NATS failed"))),
    };

    // 5. Ordered teardown: every domain stops taking requests at once, then each
    // finishes its in-flight ones.
    // The gateway goes first: no new HTTP requests, in-flight ones finish against
    // domains that are still serving.
    if let Some(gateway) = gateway {
        gateway.stop().await;
    }
    domains_stop.cancel();
    for handle in served {
        handle.stop().await;
    }
    // The relay's final drain publishes what the last requests queued, while NATS is up.
    events_stop.cancel();
    let _ = tokio::join!(relay, dead_letters);
    if let Err(e) = nats.flush().await {
        tracing::warn!(error = %e, "final NATS flush failed");
    }
    drop(nats);
    if let Some(child) = child {
        child.stop().await;
    }
    store.close().await;
    shutdown.cancel();
    tracing::info!("aicore stopped");
    outcome
}
