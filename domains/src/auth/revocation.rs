//! Telling caches of Validate answers about revocations: the persisted revocation epoch
//! moved on by every revoking write, the notice published after its commit, and the
//! heartbeat that lets a cache notice a lost notice (see the module notes).

use super::*;

/// A notice that session `id` ended, at `epoch`.
pub(super) fn session_notice(id: String, epoch: u64) -> RevocationNotice {
    RevocationNotice {
        session_ids: vec![id],
        epoch,
        ..Default::default()
    }
}

/// A notice that account `id`'s sessions ended or its password or roles changed.
pub(super) fn account_notice(id: String, epoch: u64) -> RevocationNotice {
    RevocationNotice {
        account_ids: vec![id],
        epoch,
        ..Default::default()
    }
}

/// Moves the revocation epoch on by one, inside the revoking write, and returns it.
pub(super) fn bump_epoch(tx: &mut Tx<'_>) -> Result<u64, Status> {
    let current = tx
        .get(META, EPOCH_KEY)?
        .map(|b| decode_epoch(&b))
        .transpose()?
        .unwrap_or(0);
    let next = current.saturating_add(1);
    tx.put(META, EPOCH_KEY, next.to_be_bytes().to_vec());
    Ok(next)
}

pub(super) fn decode_epoch(b: &[u8]) -> Result<u64, Status> {
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| Status::internal("stored data is unreadable"))
}

/// Where revocation notices and heartbeats go instead of NATS (tests).
pub type RevocationHook = Arc<dyn Fn(RevocationNotice) + Send + Sync>;

impl Auth {
    /// Sends revocation notices to `hook` instead of NATS.
    pub fn with_revocation_hook(mut self, hook: RevocationHook) -> Self {
        self.on_revoked = Some(hook);
        self
    }

    /// The current revocation epoch (0 = nothing revoked yet).
    pub(super) fn epoch(&self) -> Result<u64, Status> {
        self.ctx
            .store
            .get_cached(META, EPOCH_KEY)?
            .map_or(Ok(0), |b| decode_epoch(&b))
    }

    /// Announces a committed revocation, before the reply goes out (on the same
    /// connection, so a subscriber sees the notice before the caller sees the reply).
    /// Core NATS, so it may be lost: the epoch it carries and the heartbeats let a cache
    /// find out.
    pub(super) async fn announce(&self, mut notice: RevocationNotice) {
        notice.heartbeat_interval_ms =
            u32::try_from(self.config.revocation_heartbeat_ms).unwrap_or(u32::MAX);
        if let Some(hook) = &self.on_revoked {
            hook(notice);
            return;
        }
        let Some(client) = &self.ctx.client else {
            return;
        };
        let subject = aicore_proto::subjects::AUTH_REVOKED;
        if let Err(e) = client
            .nats()
            .publish(subject, notice.encode_to_vec().into())
            .await
        {
            tracing::warn!(error = %e, epoch = notice.epoch, "revocation notice not sent");
        }
    }

    /// Publishes one heartbeat: the current revocation epoch, no ids.
    pub async fn heartbeat(&self) {
        match self.epoch() {
            Ok(epoch) => {
                self.announce(RevocationNotice {
                    epoch,
                    ..Default::default()
                })
                .await
            }
            Err(e) => tracing::warn!(error = %e, "revocation epoch unreadable; no heartbeat"),
        }
    }

    /// Publishes a heartbeat every `revocation_heartbeat_ms` until `ctx.shutdown`.
    pub async fn run_heartbeats(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.revocation_heartbeat_ms.max(1));
        let stop = self.ctx.shutdown.clone();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.heartbeat().await,
            }
        }
    }
}
