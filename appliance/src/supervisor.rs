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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use aicore_domains::{event_bus, registry};
use aicore_runtime::metrics::{Registry, StoreMetrics};
use aicore_runtime::outbox;
use aicore_runtime::serve::{self, ServeOptions};
use aicore_runtime::store::{Store, StoreOptions};
use aicore_runtime::streams::ensure_streams;
use aicore_runtime::{Ctx, SystemClock};

use crate::certs::Authority;
use crate::config::Config;
use crate::gateway;
use crate::nats_child::metrics::NatsMonitor;
use crate::nats_child::{NatsChild, NatsChildConfig, resolve_binary};
use crate::notify;
use crate::security::{self, ClientTls};

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

/// How long the outbox relay and the dead-letter task get to stop once asked (the
/// relay's last drain is [`outbox::FINAL_DRAIN`]); then they are aborted. Unpublished
/// events stay in the outbox for the next start.
const EVENTS_STOP: Duration = Duration::from_secs(outbox::FINAL_DRAIN.as_secs() + 2);
/// How long teardown waits for the domains' background tasks after they were told to
/// stop (a ticker's or replay's current step, a write-behind touch).
const DOMAIN_TASKS_STOP: Duration = Duration::from_secs(5);
/// How long the last flush of the domains' NATS connection may take (nothing to flush to
/// when NATS is unreachable).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long stopping nats-server may take (SIGTERM, its own stop timeout, SIGKILL).
const CHILD_STOP: Duration = Duration::from_secs(15);
/// How long closing the store may take (its queued writes commit, the log is flushed).
/// Past it the process exits anyway: acknowledged writes are durable in the log already,
/// and the next start replays it.
const STORE_CLOSE: Duration = Duration::from_secs(20);

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
        Ok(()) => {
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
            let outcome = wait(&running).await;
            notify_stop.cancel();
            if let Some(task) = notify {
                let _ = task.await;
            }
            outcome
        }
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
    // 2. NATS: the child (with our CA's certificates and users), or an existing server.
    security::validate(&config.security)?;
    let insecure = config.security.insecure_dev;
    if insecure {
        tracing::warn!("{INSECURE_WARNING}");
        eprintln!("WARNING: {INSECURE_WARNING}");
    }
    let certs_dir = config.data_dir.join("certs");
    let mut child_cfg = None;
    let identities = match &config.nats.url {
        Some(url) => external_identities(config, url)?,
        None => {
            let cfg = child_config(config, &certs_dir)?;
            child_cfg = Some(cfg.clone());
            let child = NatsChild::start(cfg, shutdown.child_token()).await?;
            metrics.register(child.metrics());
            metrics.register_scrape(Arc::new(NatsMonitor::new(
                child.monitor_url(),
                Duration::from_millis(config.metrics.nats_scrape_timeout_ms),
            )));
            running.child = Some(child);
            let identity = |name: &str| (!insecure).then(|| ClientTls::in_dir(&certs_dir, name));
            Identities {
                domains: identity("domains"),
                gateway: identity("gateway"),
            }
        }
    };
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

/// The identities to connect to an existing NATS server with: the configured client
/// certificate (all three files or none).
fn external_identities(config: &Config, url: &str) -> Result<Identities> {
    tracing::info!(%url, "using an existing NATS server; no child started");
    let s = &config.security;
    let tls = match (&s.client_cert, &s.client_key, &s.ca_cert) {
        (Some(cert), Some(key), Some(ca)) => Some(ClientTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None, None) => None,
        _ => {
            bail!("security.client_cert, client_key and ca_cert go together (all or none)")
        }
    };
    Ok(Identities {
        domains: tls.clone(),
        gateway: tls,
    })
}

/// The nats-server child's configuration: the binary, listeners and limits, and (unless
/// insecure) its certificates, issued by this appliance's CA as needed.
fn child_config(config: &Config, certs_dir: &Path) -> Result<NatsChildConfig> {
    let insecure = config.security.insecure_dev;
    let binary = resolve_binary(config.nats.server_bin.as_deref())?;
    let tls = match insecure {
        true => None,
        false => {
            let ca = Authority::open_or_create(certs_dir, config.security.ca_days)?;
            let sans = security::server_sans(&config.security, &config.nats.host);
            let now = std::time::SystemTime::now();
            let issued = security::ensure_issued(&ca, &config.security, &sans, now)?;
            if !issued.is_empty() {
                tracing::info!(certificates = %issued.join(","), "issued certificates");
            }
            Some(security::nats_tls(&ca, &config.security, now)?)
        }
    };
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
        tls,
    };
    Ok(cfg)
}

/// The event streams, so a domain's first event has somewhere to go; then the outbox
/// relay, the certificate audit (where this appliance keeps a CA) and the dead-letter
/// task, which outlive the domains in teardown.
async fn start_streams(
    config: &Config,
    store: &Store,
    nats: &async_nats::Client,
    keeps_ca: bool,
    certs_dir: &Path,
    running: &mut Running,
) -> Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    ensure_streams(&js, &config.domains.event_bus.streams())
        .await
        .map_err(|e| anyhow::anyhow!("creating the JetStream streams: {e}"))?;
    running.relay = Some(tokio::spawn(outbox::run_relay(
        store.clone(),
        js.clone(),
        running.events_stop.child_token(),
    )));
    // Certificate issues and revocations on AUDIT (only where this appliance keeps a CA).
    if keeps_ca {
        running.certs_audit = Some(tokio::spawn(crate::certs_audit::run(
            js.clone(),
            certs_dir.to_path_buf(),
            config.security.ca_days,
            Duration::from_secs(config.domains.event_bus.audit.max_age_secs),
            Duration::from_secs(config.security.check_interval_secs.max(1)),
            running.events_stop.child_token(),
        )));
    }
    running.dead_letters = Some(tokio::spawn(event_bus::run_dead_letters(
        js,
        running.events_stop.child_token(),
    )));
    Ok(())
}

/// 3. Builds each selected domain on one context and serves it on NATS.
async fn serve_domains(
    config: &Config,
    domains: &[&'static str],
    store: &Store,
    nats: &async_nats::Client,
    metrics: &Arc<Registry>,
    running: &mut Running,
) -> Result<()> {
    let ctx = Ctx {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        client: Some(aicore_sdk::Client::new(nats.clone(), Default::default())),
        idempotency_ttl: Duration::from_secs(config.domains.idempotency_ttl_secs),
        // Domain background tasks end with the domains, and teardown waits for them
        // before the store closes.
        tasks: running.domain_tasks.clone(),
        shutdown: running.domains_stop.child_token(),
        data_dir: Some(config.data_dir.clone()),
    };
    let trust = Arc::new(security::trust(&config.security));
    for name in domains {
        let spec = registry::find(name).context("domain listed but not registered")?;
        let dispatch = (spec.build)(&ctx, &config.domains)
            .map_err(|e| anyhow::anyhow!("building {name}: {e}"))?;
        let handle = serve::serve(
            nats.clone(),
            dispatch,
            ServeOptions {
                max_in_flight: config.domains.max_in_flight,
                trust: trust.clone(),
                store: Some(ctx.store.clone()),
                metrics: Some(metrics.clone()),
                ..ServeOptions::default()
            },
            running.domains_stop.child_token(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("serving {name}: {e}"))?;
        running.served.push(handle);
    }
    nats.flush().await.context("flushing NATS subscriptions")?;
    Ok(())
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

/// Step 5: the ordered teardown of whatever `running` holds, every step bounded, so the process
/// ends even when NATS is unreachable or a request never finishes: the gateway and the
/// domains drain their in-flight requests within `drain` together (then they are cut),
/// the outbox relay and the dead-letter task get [`EVENTS_STOP`], the last NATS flush
/// [`FLUSH_TIMEOUT`], nats-server [`CHILD_STOP`], the store [`STORE_CLOSE`]. A second
/// SIGTERM or SIGINT ends the waiting at once (acknowledged writes are durable in the
/// store's log; the next start replays it). Err when the store did not close.
async fn teardown(running: Running, store: &Store, drain: Duration) -> Result<()> {
    let again = async {
        let mut sigterm =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tokio::select! {
        r = stop_all(running, store, drain) => r,
        () = again => {
            tracing::warn!("signalled again during teardown: exiting without waiting further");
            Err(anyhow::anyhow!("teardown interrupted by a second signal"))
        }
    }
}

async fn stop_all(mut running: Running, store: &Store, drain: Duration) -> Result<()> {
    let drained_by = tokio::time::Instant::now() + drain;
    // The gateway goes first: no new HTTP requests, in-flight ones finish against domains
    // that are still serving.
    if let Some(gateway) = running.gateway.take()
        && tokio::time::timeout_at(drained_by, gateway.stop())
            .await
            .is_err()
    {
        tracing::warn!("the gateway did not stop within the drain timeout");
    }
    // Every domain stops taking requests at once, then each finishes its in-flight ones.
    running.domains_stop.cancel();
    let served = std::mem::take(&mut running.served);
    let domains = async {
        for handle in served {
            handle.stop().await;
        }
    };
    if tokio::time::timeout_at(drained_by, domains).await.is_err() {
        tracing::warn!("domains did not finish their requests within the drain timeout; cut");
    }
    // Their background work (tickers, heartbeats, replays, write-behind touches) ends
    // with them; it may still write, so it is waited for while the store is open.
    running.domain_tasks.close();
    match tokio::time::timeout(DOMAIN_TASKS_STOP, running.domain_tasks.wait()).await {
        Ok(()) => tracing::info!("domain background tasks ended"),
        Err(_) => tracing::warn!(
            left = running.domain_tasks.len(),
            "domain background tasks did not end in time; the store closes without them"
        ),
    }
    // The relay's final drain publishes what the last requests queued, while NATS is up;
    // what it cannot publish stays in the outbox.
    running.events_stop.cancel();
    for (what, task) in [
        ("outbox relay", running.relay.take()),
        ("dead-letter task", running.dead_letters.take()),
        ("certificate audit", running.certs_audit.take()),
    ] {
        let Some(mut task) = task else { continue };
        if tokio::time::timeout(EVENTS_STOP, &mut task).await.is_err() {
            tracing::warn!("the {what} did not stop in time; aborted");
            task.abort();
        }
    }
    if let Some(nats) = running.nats.take() {
        match tokio::time::timeout(FLUSH_TIMEOUT, nats.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final NATS flush failed"),
            Err(_) => tracing::warn!("final NATS flush timed out (NATS unreachable)"),
        }
    }
    if let Some(task) = running.certs_task.take() {
        task.abort();
    }
    if let Some(child) = running.child.take()
        && tokio::time::timeout(CHILD_STOP, child.stop())
            .await
            .is_err()
    {
        tracing::warn!("nats-server did not stop in time; it is killed with this process");
    }
    let closed = tokio::time::timeout(STORE_CLOSE, store.close()).await;
    drop(running.published.take());
    closed.map_err(|_| {
        anyhow::anyhow!(
            "the store did not close within {STORE_CLOSE:?}; its log is replayed at the next start"
        )
    })
}

/// Every `check_interval_secs`: renews the appliance's own certificates when due and
/// rebuilds the users from the certificate index (a revoked or expired identity loses
/// its user); when anything changed, rewrites the configuration and reloads nats-server.
/// Clients reconnect with their renewed certificate files on their next reconnect.
async fn watch_certs(
    reloader: crate::nats_child::Reloader,
    mut cfg: NatsChildConfig,
    certs_dir: std::path::PathBuf,
    security: crate::config::SecurityConfig,
    nats_host: String,
    stop: CancellationToken,
) {
    let every = Duration::from_secs(security.check_interval_secs.max(1));
    let sans = security::server_sans(&security, &nats_host);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let check = || -> Result<(Vec<String>, Option<crate::nats_child::NatsTls>)> {
            let ca = Authority::open_or_create(&certs_dir, security.ca_days)?;
            let now = std::time::SystemTime::now();
            let renewed = security::ensure_issued(&ca, &security, &sans, now)?;
            Ok((renewed, Some(security::nats_tls(&ca, &security, now)?)))
        };
        let (renewed, tls) = match check() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "checking certificates failed");
                continue;
            }
        };
        if renewed.is_empty() && tls == cfg.tls {
            continue;
        }
        if !renewed.is_empty() {
            tracing::info!(certificates = %renewed.join(","), "renewed certificates");
        }
        cfg.tls = tls;
        if let Err(e) = reloader.reload(&cfg).await {
            tracing::warn!(error = %format!("{e:#}"), "reloading nats-server failed");
        }
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
