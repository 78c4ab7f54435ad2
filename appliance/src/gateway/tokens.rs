//! Bearer tokens at the gateway: `auth.Validate` answers, cached, with revocation taking
//! effect at once. The cache is keyed by the token's SHA-256 (the token itself is never
//! kept) and holds who the token belongs to for a short TTL, a safety net only: auth
//! announces every revocation (logout, password change, refresh-token reuse, role change)
//! on [`REVOKED_SUBJECT`] right after its commit, and the gateway marks the session or
//! account as changed at that instant. A cached answer fetched before such a mark is
//! stale and is asked again, so the very next request after a logout is refused. Marks
//! live as long as a cached answer can, in a bounded cache. If the NATS connection drops,
//! notices may have been missed, so the whole cache is dropped on reconnect.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use aicore_domains::auth::{REVOKED_SUBJECT, Revoked};
use aicore_proto::aicore::auth::v1::{AuthClient, ValidateRequest};
use aicore_proto::{CallOptions, Caller, Status};
use futures::StreamExt;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

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

/// The Validate cache and its revocation marks.
pub struct Tokens {
    cache: Cache<[u8; 32], Arc<Entry>>,
    revoked_sessions: Cache<String, Instant>,
    changed_accounts: Cache<String, Instant>,
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
            metrics,
        }
    }

    /// Who `token` belongs to, if a fresh answer is cached.
    pub fn cached(&self, token: &str) -> Option<Bearer> {
        let key = key(token);
        let e = self.cache.get(&key)?;
        if self.fresh(&e) {
            self.metrics.validate_hits.fetch_add(1, Ordering::Relaxed);
            return Some(e.bearer.clone());
        }
        self.cache.invalidate(&key);
        None
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
                    ..options.clone()
                },
            )
            .await?;
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
        Ok(bearer)
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

    /// Applies a revocation notice from auth.
    pub fn revoke(&self, r: &Revoked) {
        let now = Instant::now();
        for s in &r.session_ids {
            self.revoked_sessions.insert(s.clone(), now);
        }
        for a in &r.account_ids {
            self.changed_accounts.insert(a.clone(), now);
        }
        self.metrics.revocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets every cached answer (after a reconnect, when notices may have been lost).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Applies auth's revocation notices until `stop`.
    pub async fn listen(
        self: Arc<Self>,
        nats: async_nats::Client,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
        let mut sub = nats.subscribe(REVOKED_SUBJECT).await?;
        Ok(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                match serde_json::from_slice::<Revoked>(&msg.payload) {
                    Ok(r) => self.revoke(&r),
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
