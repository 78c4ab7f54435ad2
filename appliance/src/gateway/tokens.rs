//! Bearer tokens at the gateway: `auth.Validate` answers, cached, with revocation taking
//! effect at once. The cache is keyed by the token's SHA-256 (the token itself is never
//! kept) and holds who the token belongs to for a short TTL, a safety net only: auth
//! announces every revocation (logout, password change, refresh-token reuse, role change)
//! on [`AUTH_REVOKED`] right after its commit, and the gateway marks the session or
//! account as changed at that instant. A cached answer fetched before such a mark is
//! stale and is asked again, so the very next request after a logout is refused. Marks
//! live as long as a cached answer can, in a bounded cache.
//!
//! Notices are core NATS, so one can be lost; the cache must not then serve a revoked
//! token for its TTL. Every notice carries auth's revocation epoch (persisted, one more
//! per revoking commit), auth sends a heartbeat with the current epoch every interval, and
//! Validate answers carry it too. The gateway remembers the epoch it has applied: a
//! notice beyond the next one, a Validate answer beyond the next one, or a heartbeat
//! ahead of it (or behind: auth's store was replaced) means notices were missed, and the
//! whole cache is dropped. Cached answers are served only while the view is current: a
//! heartbeat heard within the last two intervals; otherwise every token is asked again.
//! If the NATS connection drops, the cache is dropped and the view is stale until the
//! next heartbeat.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aicore_proto::aicore::auth::v1::{
    AuthClient, RevocationNotice, ValidateRequest, ValidateResponse,
};
use aicore_proto::subjects::AUTH_REVOKED;
use aicore_proto::{CallOptions, Caller, Status};
use futures::StreamExt;
use moka::sync::Cache;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// Heartbeat intervals without one after which cached answers are no longer served.
const STALE_AFTER_INTERVALS: u32 = 2;

/// Who a token belongs to: the caller and the session of the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Bearer {
    /// The account and its roles.
    pub caller: Caller,
    /// The session the token belongs to.
    pub session_id: String,
}

/// One cached Validate answer.
struct Entry {
    bearer: Bearer,
    /// When the access token itself expires.
    expires: SystemTime,
    /// When the Validate call that produced it started.
    fetched: Instant,
}

/// What the gateway knows of auth's revocations.
#[derive(Debug, Default)]
struct View {
    /// The highest epoch applied without a gap (`None` = nothing heard yet).
    applied: Option<u64>,
    /// When the last notice or heartbeat arrived.
    heard: Option<Instant>,
    /// auth's heartbeat interval, from its last message.
    interval: Duration,
}

/// The Validate cache, its revocation marks and its view of auth's epoch.
pub struct Tokens {
    cache: Cache<[u8; 32], Arc<Entry>>,
    revoked_sessions: Cache<String, Instant>,
    changed_accounts: Cache<String, Instant>,
    view: Mutex<View>,
    metrics: Arc<Metrics>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// A cache of at most `capacity` tokens, each kept at most `ttl`.
    pub fn new(ttl: Duration, capacity: u64, metrics: Arc<Metrics>) -> Self {
        let marks = || {
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl + Duration::from_secs(1))
                .build()
        };
        Tokens {
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            revoked_sessions: marks(),
            changed_accounts: marks(),
            view: Mutex::default(),
            metrics,
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who `token` belongs to, if a fresh answer is cached and the view is current.
    pub fn cached(&self, token: &str) -> Option<Bearer> {
        self.cached_at(token, Instant::now())
    }

    fn cached_at(&self, token: &str, now: Instant) -> Option<Bearer> {
        if !self.current(now) {
            return None;
        }
        let key = key(token);
        let e = self.cache.get(&key)?;
        if self.fresh(&e) {
            self.metrics.validate_hits.fetch_add(1, Ordering::Relaxed);
            return Some(e.bearer.clone());
        }
        self.cache.invalidate(&key);
        None
    }

    /// Whether a heartbeat (or notice) came within the last two intervals.
    fn current(&self, now: Instant) -> bool {
        let v = self.view();
        v.heard
            .is_some_and(|h| now.saturating_duration_since(h) <= v.interval * STALE_AFTER_INTERVALS)
    }

    /// Asks `auth.Validate` who `token` belongs to, and caches the answer.
    pub async fn fetch(
        &self,
        auth: &AuthClient<aicore_sdk::Client>,
        token: &str,
        options: &CallOptions,
    ) -> Result<Bearer, Status> {
        self.metrics.validate_misses.fetch_add(1, Ordering::Relaxed);
        let fetched = Instant::now();
        let v = auth
            .validate(
                ValidateRequest {
                    access_token: token.to_string(),
                },
                &CallOptions {
                    // The gateway asks as itself: no end-user caller.
                    caller: None,
                    caller_session: None,
                    ..options.clone()
                },
            )
            .await?;
        Ok(self.admit(token, v, fetched))
    }

    /// Caches a Validate answer for `token` (asked at `fetched`) unless a revocation
    /// overtook it, after checking its epoch against the view.
    fn admit(&self, token: &str, v: ValidateResponse, fetched: Instant) -> Bearer {
        self.observe(v.revocation_epoch);
        let expires = v
            .expires_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let entry = Arc::new(Entry {
            bearer: Bearer {
                caller: Caller {
                    account_id: v.account_id,
                    roles: v.roles,
                },
                session_id: v.session_id,
            },
            expires,
            fetched,
        });
        let bearer = entry.bearer.clone();
        // Do not cache an answer a revocation overtook while it was on its way.
        if self.fresh(&entry) {
            self.cache.insert(key(token), entry);
        }
        bearer
    }

    fn fresh(&self, e: &Entry) -> bool {
        let overtaken = |mark: Option<Instant>| mark.is_some_and(|m| m >= e.fetched);
        e.expires > SystemTime::now()
            && !overtaken(self.revoked_sessions.get(e.bearer.session_id.as_str()))
            && !overtaken(
                self.changed_accounts
                    .get(e.bearer.caller.account_id.as_str()),
            )
    }

    /// A Validate answer at `epoch`: one beyond the next epoch means notices were missed.
    /// The next one itself may be a notice still on its way (the heartbeat settles it).
    fn observe(&self, epoch: u64) {
        let mut v = self.view();
        if let Some(applied) = v.applied
            && epoch > applied.saturating_add(1)
        {
            self.drop_all(&mut v, epoch, "a Validate answer is ahead of the notices");
        }
    }

    /// Applies a notice or heartbeat from auth.
    pub fn apply(&self, n: &RevocationNotice) {
        self.apply_at(n, Instant::now());
    }

    fn apply_at(&self, n: &RevocationNotice, now: Instant) {
        for s in &n.session_ids {
            self.revoked_sessions.insert(s.clone(), now);
        }
        for a in &n.account_ids {
            self.changed_accounts.insert(a.clone(), now);
        }
        let heartbeat = n.session_ids.is_empty() && n.account_ids.is_empty();
        if !heartbeat {
            self.metrics.revocations.fetch_add(1, Ordering::Relaxed);
        }
        let mut v = self.view();
        match v.applied {
            // What was cached before the first word from auth cannot be vouched for.
            None => self.drop_all(&mut v, n.epoch, "first revocation epoch heard"),
            Some(applied) if heartbeat && n.epoch != applied => {
                self.drop_all(&mut v, n.epoch, "a heartbeat is not at the applied epoch")
            }
            Some(applied) if !heartbeat && n.epoch > applied.saturating_add(1) => {
                self.drop_all(&mut v, n.epoch, "a revocation notice was missed")
            }
            // The next notice, or one overtaken by a later one (applied above already).
            Some(applied) => v.applied = Some(applied.max(n.epoch)),
        }
        v.heard = Some(now);
        v.interval = Duration::from_millis(n.heartbeat_interval_ms.into());
    }

    fn drop_all(&self, v: &mut View, epoch: u64, why: &str) {
        if v.applied.is_some() {
            tracing::info!(epoch, applied = v.applied, why, "Validate cache dropped");
        }
        self.cache.invalidate_all();
        v.applied = Some(epoch);
    }

    /// Forgets every cached answer and waits for the next heartbeat before serving from
    /// the cache again (after a reconnect, when notices may have been lost).
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.view().heard = None;
    }

    /// Applies auth's revocation notices until `stop`.
    pub async fn listen(
        self: Arc<Self>,
        nats: async_nats::Client,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
        let mut sub = nats.subscribe(AUTH_REVOKED).await?;
        Ok(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                match RevocationNotice::decode(msg.payload) {
                    Ok(n) => self.apply(&n),
                    Err(e) => {
                        // Unreadable: be safe and forget everything.
                        tracing::warn!(error = %e, "unreadable revocation notice; cache cleared");
                        self.clear();
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "at_token-of-the-test";
    const INTERVAL_MS: u32 = 500;

    fn tokens() -> Tokens {
        Tokens::new(
            Duration::from_secs(10),
            1000,
            Arc::new(Metrics::new(Vec::new(), Default::default())),
        )
    }

    fn heartbeat(epoch: u64) -> RevocationNotice {
        RevocationNotice {
            epoch,
            heartbeat_interval_ms: INTERVAL_MS,
            ..Default::default()
        }
    }

    fn revoked(session: &str, epoch: u64) -> RevocationNotice {
        RevocationNotice {
            session_ids: vec![session.into()],
            epoch,
            heartbeat_interval_ms: INTERVAL_MS,
            ..Default::default()
        }
    }

    fn answer(session: &str, epoch: u64) -> ValidateResponse {
        ValidateResponse {
            account_id: "acc_1".into(),
            roles: vec!["player".into()],
            session_id: session.into(),
            expires_at: Some((SystemTime::now() + Duration::from_secs(600)).into()),
            revocation_epoch: epoch,
        }
    }

    /// A cache that has heard heartbeat `epoch` at `t0` and holds `TOKEN` (session s1).
    fn warm(epoch: u64, t0: Instant) -> Tokens {
        let t = tokens();
        t.apply_at(&heartbeat(epoch), t0);
        t.admit(TOKEN, answer("s1", epoch), t0);
        assert!(t.cached_at(TOKEN, t0).is_some());
        t
    }

    #[test]
    fn the_next_notice_marks_only_its_session() {
        let t0 = Instant::now();
        let t = warm(7, t0);
        t.admit("at_other", answer("s2", 7), t0);
        t.apply_at(&revoked("s1", 8), t0);
        assert!(t.cached_at(TOKEN, t0).is_none());
        assert!(t.cached_at("at_other", t0).is_some());
        // The heartbeat at the applied epoch changes nothing.
        t.apply_at(&heartbeat(8), t0);
        assert!(t.cached_at("at_other", t0).is_some());
    }

    #[test]
    fn a_notice_after_a_gap_drops_the_whole_cache() {
        let t0 = Instant::now();
        let t = warm(7, t0);
        // Epoch 8 (revoking s1) was lost; 9 revokes some other session.
        t.apply_at(&revoked("s9", 9), t0);
        assert!(t.cached_at(TOKEN, t0).is_none());
    }

    #[test]
    fn a_heartbeat_ahead_of_the_applied_epoch_drops_the_whole_cache() {
        let t0 = Instant::now();
        let t = warm(7, t0);
        // The only notice since (epoch 8) was lost; the heartbeat says 8.
        t.apply_at(&heartbeat(8), t0);
        assert!(t.cached_at(TOKEN, t0).is_none());
        // auth's store replaced by an older one: the epoch went back.
        t.admit(TOKEN, answer("s1", 8), t0);
        t.apply_at(&heartbeat(3), t0);
        assert!(t.cached_at(TOKEN, t0).is_none());
    }

    #[test]
    fn a_validate_answer_beyond_the_next_epoch_drops_the_whole_cache() {
        let t0 = Instant::now();
        let t = warm(7, t0);
        t.admit("at_other", answer("s2", 8), t0);
        assert!(t.cached_at(TOKEN, t0).is_some(), "8 may be on its way");
        t.admit("at_third", answer("s3", 10), t0);
        assert!(t.cached_at(TOKEN, t0).is_none());
        assert!(t.cached_at("at_other", t0).is_none());
        // The answer that revealed the gap is itself current.
        assert!(t.cached_at("at_third", t0).is_some());
    }

    #[test]
    fn without_recent_heartbeats_the_cache_is_not_served() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(INTERVAL_MS.into());
        let t = warm(7, t0);
        assert!(t.cached_at(TOKEN, t0 + interval * 2).is_some());
        let silent = t0 + interval * 2 + Duration::from_millis(1);
        assert!(t.cached_at(TOKEN, silent).is_none());
        // The next heartbeat at the same epoch makes the same entry servable again.
        t.apply_at(&heartbeat(7), silent);
        assert!(t.cached_at(TOKEN, silent).is_some());
        // Before any heartbeat, nothing is served.
        let fresh = tokens();
        fresh.admit(TOKEN, answer("s1", 0), t0);
        assert!(fresh.cached_at(TOKEN, t0).is_none());
        // A reconnect waits for the next heartbeat too.
        t.clear();
        t.admit(TOKEN, answer("s1", 7), silent);
        assert!(t.cached_at(TOKEN, silent).is_none());
    }
}
