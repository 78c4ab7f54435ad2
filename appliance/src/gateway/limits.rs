//! Per-client rate limiting: one token bucket per client, kept as a GCRA state (the
//! bucket's "theoretical arrival time" in one atomic), so a check is a cache lookup and a
//! compare-and-swap, with no lock and no timer. Buckets live in a size-bounded moka cache
//! that also forgets idle ones (an idle bucket is a full bucket, so forgetting it changes
//! nothing): a flood of new client addresses evicts old entries instead of growing memory.
//! Keys are the account id for authenticated requests and the client IP otherwise; a
//! route's own limit (see [`super::routes`]) may also keep one bucket for everybody.
//! The global in-flight bound is a plain semaphore in the request path, not here.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// A keyed token-bucket limiter.
pub struct RateLimiter {
    /// Nanoseconds between two tokens.
    interval_ns: u64,
    /// Nanoseconds of credit a full bucket holds (`burst × interval`).
    capacity_ns: u64,
    epoch: Instant,
    accounts: Cache<String, Arc<AtomicU64>>,
    ips: Cache<IpAddr, Arc<AtomicU64>>,
    /// The one bucket of [`Client::Everyone`].
    everyone: Arc<AtomicU64>,
}

/// Whose bucket a request draws from.
#[derive(Debug, Clone, Copy)]
pub enum Client<'a> {
    /// An authenticated account.
    Account(&'a str),
    /// An anonymous client, by address.
    Ip(IpAddr),
    /// Everybody at once: one bucket for all clients.
    Everyone,
}

impl RateLimiter {
    /// `per_sec` tokens a second, up to `burst` at once, for at most `max_clients`
    /// clients remembered. `per_sec == 0` disables limiting.
    pub fn new(per_sec: f64, burst: u32, max_clients: u64) -> Self {
        let interval_ns = if per_sec > 0.0 {
            (1e9 / per_sec).max(1.0) as u64
        } else {
            0
        };
        let capacity_ns = interval_ns.saturating_mul(u64::from(burst.max(1)));
        let idle = Duration::from_nanos(capacity_ns.max(1_000_000_000));
        RateLimiter {
            interval_ns,
            capacity_ns,
            epoch: Instant::now(),
            accounts: Cache::builder()
                .max_capacity(max_clients)
                .time_to_idle(idle)
                .build(),
            ips: Cache::builder()
                .max_capacity(max_clients)
                .time_to_idle(idle)
                .build(),
            everyone: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Takes one token from `client`'s bucket; `Err(wait)` when it is empty.
    pub fn check(&self, client: Client<'_>) -> Result<(), Duration> {
        if self.interval_ns == 0 {
            return Ok(());
        }
        let tat = match client {
            Client::Account(a) => match self.accounts.get(a) {
                Some(t) => t,
                None => self
                    .accounts
                    .get_with(a.to_string(), || Arc::new(AtomicU64::new(0))),
            },
            Client::Ip(ip) => self.ips.get_with(ip, || Arc::new(AtomicU64::new(0))),
            Client::Everyone => self.everyone.clone(),
        };
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            // GCRA: the bucket is empty when the next arrival time is more than a full
            // bucket ahead of now.
            let next = current.max(now) + self.interval_ns;
            if next - now > self.capacity_ns {
                return Err(Duration::from_nanos(next - now - self.capacity_ns));
            }
            match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_client() {
        let l = RateLimiter::new(10.0, 3, 100);
        let a = Client::Account("acc_a");
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
        }
        let wait = l.check(a).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another client has its own bucket.
        assert!(l.check(Client::Account("acc_b")).is_ok());
        assert!(l.check(Client::Ip("127.0.0.1".parse().unwrap())).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.check(a).is_ok());
    }

    #[test]
    fn everyone_shares_one_bucket() {
        let l = RateLimiter::new(1.0, 2, 100);
        assert!(l.check(Client::Everyone).is_ok());
        assert!(l.check(Client::Everyone).is_ok());
        assert!(l.check(Client::Everyone).is_err());
        // Per-client buckets are not drawn from.
        assert!(l.check(Client::Account("a")).is_ok());
    }

    #[test]
    fn zero_rate_disables_limiting() {
        let l = RateLimiter::new(0.0, 1, 10);
        for _ in 0..1000 {
            assert!(l.check(Client::Account("a")).is_ok());
        }
    }
}
