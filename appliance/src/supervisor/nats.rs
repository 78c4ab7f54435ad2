//! The NATS side of the start-up: the identities to connect with, the nats-server child's
//! configuration with certificates from this appliance's CA, and the task that renews
//! those certificates and reloads nats-server when they change.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio_util::sync::CancellationToken;

use super::Identities;
use crate::certs::Authority;
use crate::config::Config;
use crate::nats_child::{NatsChildConfig, resolve_binary};
use crate::security::{self, ClientTls};

/// The identities to connect to an existing NATS server with: the configured client
/// certificate (all three files or none).
pub(super) fn external_identities(config: &Config, url: &str) -> Result<Identities> {
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
pub(super) fn child_config(config: &Config, certs_dir: &Path) -> Result<NatsChildConfig> {
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

/// Every `check_interval_secs`: renews the appliance's own certificates when due and
/// rebuilds the users from the certificate index (a revoked or expired identity loses
/// its user); when anything changed, rewrites the configuration and reloads nats-server.
/// Clients reconnect with their renewed certificate files on their next reconnect.
pub(super) async fn watch_certs(
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
