//! The handler context every domain gets ([`Ctx`]: store, clock, NATS client, shutdown
//! signal), the clock abstraction tests move by hand, and the small helpers for ids and
//! timestamps. It holds no configuration: each domain receives its own section when it
//! is built, so a domain cannot read (or depend on) another's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aicore_proto::{Code, Status};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Where time comes from, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock tests set and advance by hand.
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    /// A manual clock at `t`.
    pub fn new(t: SystemTime) -> Self {
        ManualClock(Mutex::new(t))
    }
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a handler gets: the store, the clock, a client for cross-domain calls, the
/// shutdown signal. A domain's own configuration is handed to it when it is built
/// ([`crate::Domain::build`]), so no domain reads another's.
#[derive(Clone)]
pub struct Ctx {
    /// The domains' store.
    pub store: Store,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The SDK client for calls to other domains (absent in unit tests).
    pub client: Option<aicore_sdk::Client>,
    /// How long idempotency records are kept (see [`crate::idempotency`]); one setting
    /// for every domain.
    pub idempotency_ttl: Duration,
    /// Every background task a domain starts ([`Ctx::spawn`]): tickers, heartbeats,
    /// replays, write-behind touches. Teardown waits for them ([`Ctx::wait_tasks`]) before
    /// the store closes, so none writes into a closed store or is cut mid-write.
    pub tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the appliance stops; background tasks of a domain (tickers, pollers)
    /// end with it, before the store closes.
    pub shutdown: CancellationToken,
    /// Where a domain may keep files derived from its tables (a search index), each under
    /// a folder named after the domain; `None` keeps them in memory (unit tests). The
    /// store stays the source of truth: such files are rebuilt when missing or stale.
    pub data_dir: Option<std::path::PathBuf>,
}

impl Ctx {
    /// A context on an in-memory store and a manual clock at a fixed instant, for tests.
    pub fn for_tests() -> (Ctx, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let ctx = Ctx {
            store: Store::in_memory(),
            clock: clock.clone(),
            client: None,
            idempotency_ttl: crate::idempotency::MIN_TTL,
            tasks: Default::default(),
            shutdown: CancellationToken::new(),
            data_dir: None,
        };
        (ctx, clock)
    }

    /// Starts background work owned by the domains: it must end when `shutdown` is
    /// cancelled, and teardown waits for it before closing the store.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Waits (at most `bound`) for every task [`Ctx::spawn`] started to end, once
    /// `shutdown` is cancelled; true when all ended. Call before closing the store.
    pub async fn wait_tasks(&self, bound: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(bound, self.tasks.wait()).await.is_ok()
    }

    /// The client for cross-domain calls, or Unavailable when there is none.
    pub fn client(&self) -> Result<&aicore_sdk::Client, Status> {
        self.client
            .as_ref()
            .ok_or_else(|| Status::new(Code::Unavailable, "no NATS client in this context"))
    }

    /// Now, as a protobuf timestamp.
    pub fn now_ts(&self) -> prost_types::Timestamp {
        timestamp(self.clock.now())
    }
}

/// A `SystemTime` as a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// An instant stored as milliseconds since the Unix epoch (how records keep instants) as a
/// protobuf timestamp; `None` for 0 or less (never set).
pub fn timestamp_ms(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

/// A protobuf timestamp as milliseconds since the Unix epoch (what [`timestamp_ms`] reads).
pub fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// A fresh random id with a readable prefix (`acc_3f9c…`), 128 bits of randomness.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn teardown_waits_for_background_work_before_the_store_closes() {
        let (ctx, _) = Ctx::for_tests();
        let (store, stop) = (ctx.store.clone(), ctx.shutdown.clone());
        // A ticker that, on shutdown, writes its last state (as time-manager's does).
        ctx.spawn(async move {
            stop.cancelled().await;
            tokio::task::yield_now().await;
            store
                .write(|tx| {
                    tx.put("t", b"last", vec![1]);
                    Ok(())
                })
                .await
                .expect("the store is still open");
        });
        ctx.shutdown.cancel();
        assert!(ctx.wait_tasks(Duration::from_secs(10)).await);
        ctx.store.close().await;
        assert_eq!(
            ctx.store.get("t", b"last").unwrap().as_deref(),
            Some(&[1u8][..])
        );
        // A task that ignores shutdown is reported, not waited for forever.
        let (ctx, _) = Ctx::for_tests();
        ctx.spawn(std::future::pending());
        ctx.shutdown.cancel();
        assert!(!ctx.wait_tasks(Duration::from_millis(50)).await);
    }
}
