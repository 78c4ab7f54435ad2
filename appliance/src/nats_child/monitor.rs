//! The watch over a running child: restarts it with exponential backoff when it dies,
//! reports a crash loop as failed, and stops it on shutdown.

use super::*;

/// Delay before the `attempt`-th restart within the window (1-based).
pub(super) fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    BACKOFF_START
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// The task that watches the child and restarts it.
pub(super) struct Monitor {
    pub(super) cfg: NatsChildConfig,
    pub(super) spawner: Spawner,
    pub(super) stop: CancellationToken,
    pub(super) status: watch::Sender<NatsStatus>,
    pub(super) shared: Arc<Shared>,
}

impl Monitor {
    pub(super) async fn run(self, mut process: Process) {
        // Restart times within the window; its length also sets the backoff, so the delay
        // falls back to the minimum once the child has stayed up for a whole window.
        let mut recent: VecDeque<Instant> = VecDeque::new();
        loop {
            let exit = tokio::select! {
                _ = self.stop.cancelled() => {
                    self.shut_down(process).await;
                    return;
                }
                exit = process.child.wait() => exit,
            };
            self.shared.pid.store(0, Ordering::SeqCst);
            let output = process.drain_output().await;
            let exit = match exit {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            tracing::warn!(pid = process.pid, %exit, last_output = %output, "nats-server exited unexpectedly");
            match self
                .restart(
                    &mut recent,
                    format!("{exit}; last warnings and errors:\n{output}"),
                )
                .await
            {
                Some(next) => process = next,
                None => return,
            }
        }
    }

    /// Restarts with backoff until a child is healthy (`Some`), or gives up or is stopped
    /// (`None`, status already set).
    pub(super) async fn restart(
        &self,
        recent: &mut VecDeque<Instant>,
        mut last_failure: String,
    ) -> Option<Process> {
        loop {
            let now = Instant::now();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.cfg.restart_window)
            {
                recent.pop_front();
            }
            if recent.len() >= self.cfg.max_restarts as usize {
                let reason = format!(
                    "crash loop: gave up after {} restart(s) within {:?}; last failure: {last_failure}",
                    recent.len(),
                    self.cfg.restart_window
                );
                tracing::error!(restarts = recent.len(), "nats-server given up: {reason}");
                self.status.send_replace(NatsStatus::Failed(reason));
                return None;
            }
            recent.push_back(now);
            let attempt = u32::try_from(recent.len()).unwrap_or(u32::MAX);
            let delay = backoff(attempt);
            self.status.send_replace(NatsStatus::Restarting { attempt });
            tracing::info!(attempt, ?delay, "restarting nats-server");
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.status.send_replace(NatsStatus::Stopped);
                    return None;
                }
                () = tokio::time::sleep(delay) => {}
            }
            self.shared.restarts.fetch_add(1, Ordering::SeqCst);
            match spawn_healthy(&self.cfg, &self.spawner, &self.shared, &self.stop).await {
                Ok(process) => {
                    tracing::info!(pid = process.pid, attempt, "nats-server restarted");
                    self.status
                        .send_replace(NatsStatus::Running { pid: process.pid });
                    return Some(process);
                }
                Err(StartError::Cancelled) => {
                    self.status.send_replace(NatsStatus::Stopped);
                    return None;
                }
                Err(StartError::Failed(e)) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "nats-server restart failed");
                    last_failure = format!("{e:#}");
                }
            }
        }
    }

    /// Stops the child on request and records it.
    pub(super) async fn shut_down(&self, mut process: Process) {
        let status = process.terminate().await;
        self.shared.pid.store(0, Ordering::SeqCst);
        process.drain_output().await;
        match status {
            Some(status) => tracing::info!(pid = process.pid, %status, "nats-server stopped"),
            None => tracing::warn!(
                pid = process.pid,
                "nats-server stopped; exit status unknown"
            ),
        }
        self.status.send_replace(NatsStatus::Stopped);
    }
}
