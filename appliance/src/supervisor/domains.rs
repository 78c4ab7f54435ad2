//! Step 3 of the start-up: the event streams with the tasks that outlive the domains (the
//! outbox relay, the certificate audit, the dead-letter task), then the domains themselves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use aicore_domains::{event_bus, registry};
use aicore_runtime::metrics::Registry;
use aicore_runtime::outbox;
use aicore_runtime::serve::{self, ServeOptions};
use aicore_runtime::store::Store;
use aicore_runtime::streams::ensure_streams;
use aicore_runtime::{Ctx, SystemClock};

use super::Running;
use crate::config::Config;
use crate::security;

/// The event streams, so a domain's first event has somewhere to go; then the outbox
/// relay, the certificate audit (where this appliance keeps a CA) and the dead-letter
/// task, which outlive the domains in teardown.
pub(super) async fn start_streams(
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
pub(super) async fn serve_domains(
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
