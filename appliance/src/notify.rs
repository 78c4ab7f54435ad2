//! systemd's service protocol, for `Type=notify` units: `READY=1` once every served domain
//! answers, `WATCHDOG=1` from the supervisor's health loop while the appliance is healthy
//! (a wedged one stops feeding it and systemd restarts it), `STOPPING=1` when the drain
//! begins, and a `STATUS=` line saying which. Outside systemd (no `NOTIFY_SOCKET`) nothing
//! runs.
//!
//! "Healthy" is deliberately narrow, so that the watchdog restarts only an appliance that
//! cannot serve, never a busy or degraded one: NATS is connected, and every domain
//! instance of this process answers its own `$SRV.PING.<domain>.<id>` (not a replica's
//! on another host) and its request loop has turned recently. A store that went read-only
//! (disk full) is degraded, not wedged: its reads still work and writes resume by
//! themselves, so it keeps the watchdog fed. nats-server restarts are the supervisor's
//! job; one that takes longer than the unit's `WatchdogSec` ends in a restart.

use std::time::Duration;

use aicore_runtime::serve::{LOOP_TURN, Liveness};
use bytes::Bytes;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// A request loop that has not turned for this long is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(5 * LOOP_TURN.as_secs());
/// How often readiness is asked while starting.
const STARTING_EVERY: Duration = Duration::from_millis(250);
/// The longest wait for the domains' ping answers.
const PING_WAIT: Duration = Duration::from_secs(2);

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Tells the service manager the drain has begun (nothing outside systemd).
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: finishing in-flight requests"),
    ]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The appliance's health as the watchdog sees it.
pub struct Health {
    nats: async_nats::Client,
    domains: Vec<Liveness>,
    ping_wait: Duration,
}

impl Health {
    /// The health of `domains`, served on `nats`; a ping answer is awaited `ping_wait`.
    pub fn new(nats: async_nats::Client, domains: Vec<Liveness>, ping_wait: Duration) -> Self {
        Health {
            nats,
            domains,
            ping_wait,
        }
    }

    /// `Ok` when healthy, else what is wrong.
    pub async fn check(&self) -> Result<(), String> {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err("NATS is not connected".into());
        }
        if let Some(d) = self
            .domains
            .iter()
            .find(|d| d.since_last_turn() > STUCK_AFTER)
        {
            return Err(format!(
                "{}'s request loop has not turned for {} s",
                d.domain,
                d.since_last_turn().as_secs()
            ));
        }
        let pings = self.domains.iter().map(|d| async move {
            let subject = format!("$SRV.PING.{}.{}", d.domain, d.id);
            let answered =
                tokio::time::timeout(self.ping_wait, self.nats.request(subject, Bytes::new()))
                    .await;
            (d.domain, matches!(answered, Ok(Ok(_))))
        });
        let silent: Vec<&str> = futures::future::join_all(pings)
            .await
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(d, _)| d)
            .collect();
        if silent.is_empty() {
            Ok(())
        } else {
            Err(format!("no ping answer from {}", silent.join(", ")))
        }
    }
}

/// Runs the protocol until `stop`: `READY=1` at the first healthy check, then, when the
/// unit has a watchdog (`WATCHDOG_USEC` for this process), a check every third of its
/// period, each healthy one feeding it. Nothing when not under systemd.
pub async fn serve(health: Health, stop: CancellationToken) {
    if !under_systemd() {
        return;
    }
    let serving = format!("serving {} domains", health.domains.len());
    loop {
        match health.check().await {
            Ok(()) => break,
            Err(problem) => send(&[NotifyState::Status(&format!("starting: {problem}"))]),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(STARTING_EVERY) => {}
        }
    }
    send(&[NotifyState::Ready, NotifyState::Status(&serving)]);
    tracing::info!("told the service manager READY=1");
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 3).max(Duration::from_millis(50));
    tracing::info!(
        watchdog_ms = period.as_millis() as u64,
        "feeding the systemd watchdog"
    );
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match health.check().await {
            Ok(()) => {
                if failing {
                    tracing::info!("healthy again; feeding the systemd watchdog");
                    send(&[NotifyState::Watchdog, NotifyState::Status(&serving)]);
                } else {
                    send(&[NotifyState::Watchdog]);
                }
                failing = false;
            }
            Err(problem) => {
                tracing::warn!(%problem, "unhealthy: not feeding the systemd watchdog");
                send(&[NotifyState::Status(&format!("unhealthy: {problem}"))]);
                failing = true;
            }
        }
    }
}

/// The ping wait for a watchdog of `period`: at most a third of it, at most [`PING_WAIT`].
pub fn ping_wait(period: Option<Duration>) -> Duration {
    period.map_or(PING_WAIT, |p| (p / 3).min(PING_WAIT))
}
