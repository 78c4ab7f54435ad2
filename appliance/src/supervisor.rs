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

use aicore_domains::{event_bus, registry};
use aicore_runtime::outbox;
use aicore_runtime::serve::{self, ServeOptions};
use aicore_runtime::store::Store;
use aicore_runtime::streams::ensure_streams;
use aicore_runtime::{Ctx, SystemClock};

use crate::certs::Authority;
use crate::config::Config;
use crate::gateway;
use crate::nats_child::{NatsChild, NatsChildConfig, resolve_binary};
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

/// Runs the appliance until a signal or a fatal failure.
pub async fn run(mut config: Config) -> Result<()> {
    let domains = config.served_domains()?;
    let http_domains = config.http_domains()?;
    if domains.is_empty() {
        bail!("no domain selected to serve");
    }
    config.pick_free_ports()?;
    let shutdown = CancellationToken::new();
    crate::files::create_private_dir(&config.data_dir).context("creating the data dir")?;
    if let Some(mode) = crate::files::shared_mode(&config.data_dir) {
        tracing::warn!("{}", crate::files::shared_warning(&config.data_dir, mode));
    }

    // 1. Store.
    let store_path = config.data_dir.join(&config.store.file);
    let store = Store::open(&store_path, config.store.options())
        .with_context(|| format!("opening store {}", store_path.display()))?;

    // 2. NATS: the child (with our CA's certificates and users), or an existing server.
    security::validate(&config.security)?;
    let insecure = config.security.insecure_dev;
    if insecure {
        tracing::warn!("{INSECURE_WARNING}");
        eprintln!("WARNING: {INSECURE_WARNING}");
    }
    let certs_dir = config.data_dir.join("certs");
    let mut child_cfg = None;
    let (child, identities) = match &config.nats.url {
        Some(url) => {
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
            let identities = Identities {
                domains: tls.clone(),
                gateway: tls,
            };
            (None, identities)
        }
        None => {
            let binary = resolve_binary(config.nats.server_bin.as_deref())?;
            let tls = match insecure {
                true => None,
                false => {
                    let ca = Authority::open_or_create(&certs_dir, config.security.ca_days)?;
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
            child_cfg = Some(cfg.clone());
            let child = NatsChild::start(cfg, shutdown.child_token()).await?;
            let identity = |name: &str| (!insecure).then(|| ClientTls::in_dir(&certs_dir, name));
            let identities = Identities {
                domains: identity("domains"),
                gateway: identity("gateway"),
            };
            (Some(child), identities)
        }
    };
    let url = child
        .as_ref()
        .map(NatsChild::client_url)
        .unwrap_or_else(|| config.nats_url());
    let nats = connect(
        &url,
        identities.domains.as_ref(),
        "domains",
        "aicore-domains",
    )
    .await?;

    // Revocations and renewals: re-read the index, renew what is due, reload nats-server.
    let certs_task = match (child.as_ref(), child_cfg) {
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

    // Event streams first, so a domain's first event has somewhere to go; then the outbox
    // relay and the dead-letter task, which outlive the domains in teardown.
    let js = async_nats::jetstream::new(nats.clone());
    ensure_streams(&js, &config.domains.event_bus.streams())
        .await
        .map_err(|e| anyhow::anyhow!("creating the JetStream streams: {e}"))?;
    let events_stop = shutdown.child_token();
    let relay = tokio::spawn(outbox::run_relay(
        store.clone(),
        js.clone(),
        events_stop.child_token(),
    ));
    // Certificate issues and revocations on AUDIT (only where this appliance keeps a CA).
    let certs_audit = (child.is_some() && !insecure).then(|| {
        tokio::spawn(crate::certs_audit::run(
            js.clone(),
            certs_dir.clone(),
            config.security.ca_days,
            Duration::from_secs(config.domains.event_bus.audit.max_age_secs),
            Duration::from_secs(config.security.check_interval_secs.max(1)),
            events_stop.child_token(),
        ))
    });
    let dead_letters = tokio::spawn(event_bus::run_dead_letters(js, events_stop.child_token()));

    // 3. Domains.
    let domains_stop = shutdown.child_token();
    let ctx = Ctx {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        client: Some(aicore_sdk::Client::new(nats.clone(), Default::default())),
        // Domain background tasks end with the domains, before the store closes.
        shutdown: domains_stop.child_token(),
    };
    let trust = Arc::new(security::trust(&config.security));
    let mut served = Vec::new();
    for name in &domains {
        let spec = registry::find(name).context("domain listed but not registered")?;
        let dispatch = (spec.build)(&ctx, &config.domains)
            .map_err(|e| anyhow::anyhow!("building {name}: {e}"))?;
        let handle = serve::serve(
            nats.clone(),
            dispatch,
            ServeOptions {
                max_in_flight: config.domains.max_in_flight,
                trust: trust.clone(),
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
                config.http_max_body_bytes(),
                config.nats.max_payload,
                &url,
                identities.gateway.as_ref(),
                http_domains,
                shutdown.child_token(),
            )
            .await?,
        ),
        false => None,
    };
    tracing::info!(nats = %url, domains = %domains.join(","), data_dir = %config.data_dir.display(), "aicore ready");
    // Where the client commands find this appliance; removed when this function returns.
    let runtime = crate::runtime_file::Runtime::of_this_process(
        url.clone(),
        child.is_some() && !insecure,
        gateway
            .as_ref()
            .map(|g| format!("http://{}", connect_addr(g.addr))),
        child.as_ref().map(NatsChild::monitor_url),
    );
    let _published = crate::runtime_file::Published::write(&config.data_dir, &runtime)
        .context("writing the runtime file")?;

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
    if let Some(task) = certs_audit {
        let _ = task.await;
    }
    if let Err(e) = nats.flush().await {
        tracing::warn!(error = %e, "final NATS flush failed");
    }
    drop(nats);
    if let Some(task) = certs_task {
        task.abort();
    }
    if let Some(child) = child {
        child.stop().await;
    }
    store.close().await;
    shutdown.cancel();
    tracing::info!("aicore stopped");
    outcome
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
