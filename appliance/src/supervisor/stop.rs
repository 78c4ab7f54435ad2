//! Step 5: the ordered teardown of whatever the start-up started, every step bounded.

use std::time::Duration;

use anyhow::Result;

use aicore_runtime::outbox;
use aicore_runtime::store::Store;

use super::Running;

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

/// Step 5: the ordered teardown of whatever `running` holds, every step bounded, so the process
/// ends even when NATS is unreachable or a request never finishes: the gateway and the
/// domains drain their in-flight requests within `drain` together (then they are cut),
/// the outbox relay and the dead-letter task get [`EVENTS_STOP`], the last NATS flush
/// [`FLUSH_TIMEOUT`], nats-server [`CHILD_STOP`], the store [`STORE_CLOSE`]. A second
/// SIGTERM or SIGINT ends the waiting at once (acknowledged writes are durable in the
/// store's log; the next start replays it). Err when the store did not close.
pub(super) async fn teardown(running: Running, store: &Store, drain: Duration) -> Result<()> {
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
