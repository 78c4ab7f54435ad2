//! `aicore run`: start-up and ordered teardown, top to bottom. Start: open the store,
//! start (or join) NATS, connect, serve the selected domains, start the HTTP gateway,
//! announce readiness. Run until SIGTERM/SIGINT or until the nats-server child
//! crash-loops. Teardown, in order: drain the gateway (no new HTTP requests, in-flight ones
//! finish, streams end), stop taking requests and finish the in-flight ones (each domain
//! drains), stop the outbox relay (after a last drain) and the dead-letter task, flush the
//! NATS connection, stop nats-server, close the store (its queued writes commit first).
//! Every piece takes a child of one cancellation token, so nothing outlives the process.
//!
//! Giving up means exiting: teardown runs whatever ended the run (a signal, nats-server
//! given up after a crash loop, a start-up step failing once the store is open), stops
//! only what had started, and bounds every step (see [`teardown`]), so the process always
//! ends, non-zero unless a signal asked for it — and a supervisor such as systemd can
//! restart it.
//!
//! This file starts and runs; `nats` holds the NATS side of the start-up (identities, the
//! child's configuration, certificate renewals), `domains` the event streams and the
//! domains, `stop` the teardown.

mod domains;
mod nats;
mod stop;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use aicore_runtime::metrics::{Registry, StoreMetrics};
use aicore_runtime::outbox;
use aicore_runtime::serve;
use aicore_runtime::store::{Store, StoreOptions};

use crate::config::Config;
use crate::gateway;
use crate::nats_child::metrics::NatsMonitor;
use crate::nats_child::{NatsChild, NatsChildConfig};
use crate::notify;
use crate::security::{self, ClientTls};
use domains::{serve_domains, start_streams};
use nats::{child_config, external_identities, watch_certs};
use stop::teardown;

/// How the appliance's own NATS clients identify themselves: the domains' and the
/// gateway's certificates (none in insecure-dev mode).
struct Identities {
    domains: Option<ClientTls>,
    gateway: Option<ClientTls>,
}

/// Said loudly whenever NATS runs without TLS and users.
const INSECURE_WARNING: &str = "INSECURE DEV MODE: NATS runs in plaintext with no users; \
    anyone who can reach its port can read and forge every message. Never use this outside \
    local debugging.";

/// Connects to NATS as `principal` (its reply inboxes under
/// [`security::inbox_prefix`], the only ones it may read) with the reconnect policy the
/// appliance wants: keep trying forever, quickly, since the child is restarted within a
/// second or two. `name` is the connection's name in nats-server's monitoring.
pub async fn connect(
    url: &str,
    tls: Option<&ClientTls>,
    principal: &str,
    name: &str,
) -> Result<async_nats::Client> {
    crate::security::with_tls(async_nats::ConnectOptions::new(), tls)
        .name(name)
        .custom_inbox_prefix(security::inbox_prefix(principal))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// What `run` has started so far. [`teardown`] stops exactly that, in order, whether the
/// start-up finished or failed half-way.
struct Running {
    gateway: Option<gateway::Server>,
    /// Cancelled to stop every domain at once (and their background tasks).
    domains_stop: CancellationToken,
    /// The domains' background tasks ([`Ctx::spawn`]), waited for before the store closes.
    domain_tasks: tokio_util::task::TaskTracker,
    served: Vec<serve::ServiceHandle>,
    /// Cancelled to stop the outbox relay and the dead-letter task.
    events_stop: CancellationToken,
    relay: Option<tokio::task::JoinHandle<()>>,
    dead_letters: Option<tokio::task::JoinHandle<()>>,
    /// Records certificate changes on AUDIT (with a CA of our own).
    certs_audit: Option<tokio::task::JoinHandle<()>>,
    nats: Option<async_nats::Client>,
    certs_task: Option<tokio::task::JoinHandle<()>>,
    child: Option<NatsChild>,
    /// The runtime file; removed when dropped, at the end of teardown.
    published: Option<crate::runtime_file::Published>,
}

impl Running {
    fn new(shutdown: &CancellationToken) -> Running {
        Running {
            gateway: None,
            domains_stop: shutdown.child_token(),
            domain_tasks: Default::default(),
            served: Vec::new(),
            events_stop: shutdown.child_token(),
            relay: None,
            dead_letters: None,
            certs_audit: None,
            nats: None,
            certs_task: None,
            child: None,
            published: None,
        }
    }
}

/// Runs the appliance until a signal or a fatal failure. Whatever ends it (a signal,
/// nats-server given up, a start-up step failing after the store opened), the ordered
/// teardown runs, every step bounded, and the store is closed; the result is an error
/// (a non-zero exit) unless a signal ended it and teardown completed.
pub async fn run(mut config: Config) -> Result<()> {
    let domains = config.served_domains()?;
    let http_domains = config.http_domains()?;
    if domains.is_empty() {
        bail!("no domain selected to serve");
    }
    config.pick_free_ports()?;
    config.traces.validate()?;
    let shutdown = CancellationToken::new();
    // Spans go to the OTLP collector from the first request on; the exporter outlives the
    // teardown so the drain's spans are sent too.
    let traces_stop = CancellationToken::new();
    let traces = crate::otlp::start(&config.traces, traces_stop.clone())?;
    crate::files::create_private_dir(&config.data_dir).context("creating the data dir")?;
    if let Some(mode) = crate::files::shared_mode(&config.data_dir) {
        tracing::warn!("{}", crate::files::shared_warning(&config.data_dir, mode));
    }

    // 1. Store. From here on every way out goes through the teardown, which closes it.
    // Every part's figures, rendered by the gateway's `/metrics`.
    let metrics = Arc::new(Registry::new(config.metrics.enabled));
    let store = open_store(&config, &metrics)?;
    let mut running = Running::new(&shutdown);
    let outcome = match start(
        &config,
        domains,
        http_domains,
        &store,
        &metrics,
        &shutdown,
        &mut running,
    )
    .await
    {
        Ok(()) => serve_until_stopped(&running, &shutdown).await,
        Err(e) => Err(e),
    };
    notify::stopping();
    if let Err(e) = &outcome {
        tracing::error!(error = %format!("{e:#}"), "stopping after a failure");
    }
    let drain = Duration::from_secs(config.http.drain_timeout_secs);
    let stopped = teardown(running, &store, drain).await;
    shutdown.cancel();
    traces_stop.cancel();
    if let Some(exporter) = traces {
        let _ = exporter.await;
    }
    tracing::info!("aicore stopped");
    outcome.and(stopped)
}

/// Opens the store and registers its figures, the outbox's and the data dir's disk's
/// with `metrics`.
fn open_store(config: &Config, metrics: &Arc<Registry>) -> Result<Store> {
    let store_path = config.data_dir.join(&config.store.file);
    let store_options = StoreOptions {
        metrics: metrics.switch(),
        ..config.store.options()
    };
    let store = Store::open(&store_path, store_options)
        .with_context(|| format!("opening store {}", store_path.display()))?;
    metrics.register(Arc::new(StoreMetrics(store.clone())));
    metrics.register(Arc::new(outbox::OutboxMetrics(store.clone())));
    metrics.register(Arc::new(crate::files::DiskMetrics::new(
        config.data_dir.clone(),
    )));
    Ok(store)
}

/// Once started: [`wait`]s, telling systemd (when under it) it is ready and alive from
/// this process's own health loop meanwhile.
async fn serve_until_stopped(running: &Running, shutdown: &CancellationToken) -> Result<()> {
    // systemd's READY=1 and watchdog, from this process's own health loop.
    let notify_stop = shutdown.child_token();
    let notify = match (&running.nats, notify::under_systemd()) {
        (Some(nats), true) => {
            let domains = running.served.iter().map(|s| s.liveness()).collect();
            let wait = notify::ping_wait(sd_notify::watchdog_enabled());
            let health = notify::Health::new(nats.clone(), domains, wait);
            Some(tokio::spawn(notify::serve(health, notify_stop.clone())))
        }
        _ => None,
    };
    let outcome = wait(running).await;
    notify_stop.cancel();
    if let Some(task) = notify {
        let _ = task.await;
    }
    outcome
}

/// Steps 2 and 3 of the start-up: NATS, event streams, domains, gateway, runtime file.
/// Everything started is recorded in `running` as it starts.
async fn start(
    config: &Config,
    domains: Vec<&'static str>,
    http_domains: Vec<&'static str>,
    store: &Store,
    metrics: &Arc<Registry>,
    shutdown: &CancellationToken,
    running: &mut Running,
) -> Result<()> {
    let insecure = config.security.insecure_dev;
    let certs_dir = config.data_dir.join("certs");
    let (identities, child_cfg) =
        start_nats(config, &certs_dir, metrics, shutdown, running).await?;
    let child = running.child.as_ref();
    let url = child
        .map(NatsChild::client_url)
        .unwrap_or_else(|| config.nats_url());
    let nats = connect(
        &url,
        identities.domains.as_ref(),
        "domains",
        "aicore-domains",
    )
    .await?;
    running.nats = Some(nats.clone());

    // Revocations and renewals: re-read the index, renew what is due, reload nats-server.
    running.certs_task = match (child, child_cfg) {
        (Some(child), Some(cfg)) if cfg.tls.is_some() => Some(tokio::spawn(watch_certs(
            child.reloader(),
            cfg,
            certs_dir.clone(),
            config.security.clone(),
            config.nats.host.clone(),
            shutdown.child_token(),
        ))),
        _ => None,
    };
    let keeps_ca = child.is_some() && !insecure;
    if keeps_ca {
        metrics.register(Arc::new(crate::certs::ExpiryMetrics::new(
            certs_dir.clone(),
        )));
    }
    start_streams(config, store, &nats, keeps_ca, &certs_dir, running).await?;
    serve_domains(config, &domains, store, &nats, metrics, running).await?;

    // 3b. The HTTP gateway, on its own NATS connection, once the domains answer.
    if config.http.enabled {
        running.gateway = Some(
            gateway::start(
                &config.http,
                config.http_max_body_bytes(),
                config.nats.max_payload,
                &url,
                identities.gateway.as_ref(),
                http_domains,
                metrics.clone(),
                shutdown.child_token(),
            )
            .await?,
        );
    }
    tracing::info!(nats = %url, domains = %domains.join(","), data_dir = %config.data_dir.display(), "aicore ready");
    publish_runtime(config, url, keeps_ca, running)
}

/// Step 2 of the start-up: the nats-server child (with our CA's certificates and users,
/// its figures registered with `metrics`, recorded in `running`), or an existing server.
/// Returns the identities to connect with and the child's configuration, if started.
async fn start_nats(
    config: &Config,
    certs_dir: &Path,
    metrics: &Arc<Registry>,
    shutdown: &CancellationToken,
    running: &mut Running,
) -> Result<(Identities, Option<NatsChildConfig>)> {
    // 2. NATS: the child (with our CA's certificates and users), or an existing server.
    security::validate(&config.security)?;
    let insecure = config.security.insecure_dev;
    if insecure {
        tracing::warn!("{INSECURE_WARNING}");
        eprintln!("WARNING: {INSECURE_WARNING}");
    }
    let mut child_cfg = None;
    let identities = match &config.nats.url {
        Some(url) => external_identities(config, url)?,
        None => {
            let cfg = child_config(config, certs_dir)?;
            child_cfg = Some(cfg.clone());
            let child = NatsChild::start(cfg, shutdown.child_token()).await?;
            metrics.register(child.metrics());
            metrics.register_scrape(Arc::new(NatsMonitor::new(
                child.monitor_url(),
                Duration::from_millis(config.metrics.nats_scrape_timeout_ms),
            )));
            running.child = Some(child);
            let identity = |name: &str| (!insecure).then(|| ClientTls::in_dir(certs_dir, name));
            Identities {
                domains: identity("domains"),
                gateway: identity("gateway"),
            }
        }
    };
    Ok((identities, child_cfg))
}

/// Where the client commands find this appliance; removed at the end of teardown.
fn publish_runtime(
    config: &Config,
    url: String,
    keeps_ca: bool,
    running: &mut Running,
) -> Result<()> {
    let child = running.child.as_ref();
    let runtime = crate::runtime_file::Runtime::of_this_process(
        url,
        keeps_ca,
        running
            .gateway
            .as_ref()
            .map(|g| format!("http://{}", connect_addr(g.addr))),
        child.map(NatsChild::monitor_url),
    );
    running.published = Some(
        crate::runtime_file::Published::write(&config.data_dir, &runtime)
            .context("writing the runtime file")?,
    );
    Ok(())
}

/// Step 4: runs until a signal (Ok) or a fatal failure: nats-server given up (Err).
async fn wait(running: &Running) -> Result<()> {
    let failed = running.child.as_ref().map(|c| c.failed());
    let fatal = async {
        match failed {
            Some(f) => Some(f.await),
            None => std::future::pending().await,
        }
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: draining"); Ok(()) }
        e = fatal => Err(e.unwrap_or_else(|| anyhow::anyhow!("NATS failed"))),
    }
}

/// The address to dial for a listening address (`0.0.0.0` and `::` listen everywhere:
/// dial loopback).
fn connect_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port())
}
