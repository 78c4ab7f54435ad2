//! auth's password hashing: argon2id off the async threads, bounded in count, in queue and
//! in time, with a lane a flood cannot take.
//!
//! Why. Each argon2id hash holds `argon2_memory_kib` (19 MiB) and a core for tens of
//! milliseconds. Measured under a 1,500-connection login flood before this module: the
//! slot was released when the caller's deadline dropped the request, while its hash ran
//! on in the blocking pool, so hashes piled up past the bound (RSS 96 MiB → 1.5 GiB, 95
//! threads, 8.8 s of CPU burned in the 5 s after the flood ended), and real players got
//! 0.1 logins/s instead of 97. So here:
//!
//! - **Count**: a hash runs only holding a slot, and the blocking task itself owns the
//!   slot, so it is free again only when the hash has really ended. At most
//!   `max_concurrent_hashes` hashes exist: memory for hashing is bounded by that times
//!   `argon2_memory_kib`.
//! - **Queue**: at most `max_waiting_hashes` attempts wait per lane; beyond that an
//!   attempt is shed at once with ResourceExhausted (429) and a Retry-After of the expected wait.
//! - **Time**: an attempt is admitted only when its expected wait plus one hash (a
//!   running mean of measured hashes) ends before its caller's deadline; else it is shed
//!   the same way, before it costs anything. A caller that gives up while waiting leaves
//!   the queue.
//! - **Lanes**: one slot (when there are two or more) is reserved for attempts that are
//!   unlikely to be a flood's — a username logging in from a source it logged in from
//!   recently (the login throttle's trusted sources), and authenticated ChangePassword
//!   calls. A flood of new names or new sources queues for the other slots only, so the
//!   players' usual logins keep going through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aicore_proto::{Code, Status};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which slots an attempt may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// A name from a source it recently logged in from, or an authenticated caller: any
    /// slot, the reserved one first.
    Trusted,
    /// Everything else: the shared slots only.
    Other,
}

/// The bounded hashing pool.
pub(crate) struct Hasher {
    argon: Argon2<'static>,
    /// Slots every lane may take.
    shared: Arc<Semaphore>,
    shared_slots: usize,
    /// Slots only the trusted lane may take.
    reserved: Arc<Semaphore>,
    /// Attempts waiting, per lane (trusted, other).
    waiting: [AtomicUsize; 2],
    max_waiting: usize,
    /// Running mean of one hash, in nanoseconds.
    mean_ns: AtomicU64,
}

/// Decrements a waiting count when the attempt stops waiting (admitted, shed or dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hasher {
    /// A pool of `slots` hashes at once and `max_waiting` waiting attempts per lane;
    /// `first_hash` is how long one hash took (measured at start-up).
    pub(crate) fn new(
        argon: Argon2<'static>,
        slots: usize,
        max_waiting: usize,
        first_hash: Duration,
    ) -> Hasher {
        let slots = slots.max(1);
        let reserved = usize::from(slots >= 2);
        Hasher {
            argon,
            shared: Arc::new(Semaphore::new(slots - reserved)),
            shared_slots: slots - reserved,
            reserved: Arc::new(Semaphore::new(reserved)),
            waiting: Default::default(),
            max_waiting,
            mean_ns: AtomicU64::new(first_hash.as_nanos().clamp(1, u64::MAX as u128) as u64),
        }
    }

    /// The expected time of one hash.
    fn mean(&self) -> Duration {
        Duration::from_nanos(self.mean_ns.load(Ordering::Relaxed))
    }

    fn learn(&self, took: Duration) {
        // An exponentially weighted mean (1/8 new): follows the machine's load.
        let old = self.mean_ns.load(Ordering::Relaxed);
        let new = (old.saturating_mul(7) / 8).saturating_add(took.as_nanos() as u64 / 8);
        self.mean_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// ResourceExhausted (429), not Unavailable: the service is alive and answering, and
    /// a client's circuit breaker must not take a shed password check for a dead service
    /// (an Unavailable shed opened the gateway's breaker on `auth.login` for everyone).
    fn shed(&self, why: &str, wait: Duration) -> Status {
        Status::new(
            Code::ResourceExhausted,
            format!("password checks are at capacity ({why}); retry shortly"),
        )
        .with_retry_after(wait.max(Duration::from_secs(1)))
    }

    fn try_slot(&self, lane: Lane) -> Option<OwnedSemaphorePermit> {
        if lane == Lane::Trusted
            && let Ok(p) = self.reserved.clone().try_acquire_owned()
        {
            return Some(p);
        }
        self.shared.clone().try_acquire_owned().ok()
    }

    /// A slot for one hash that can finish before `deadline`, or the reason it cannot.
    async fn slot(
        &self,
        lane: Lane,
        deadline: Option<Instant>,
    ) -> Result<OwnedSemaphorePermit, Status> {
        let mean = self.mean();
        let in_time = |wait: Duration| deadline.is_none_or(|d| Instant::now() + wait + mean <= d);
        if let Some(p) = self.try_slot(lane) {
            return match in_time(Duration::ZERO) {
                true => Ok(p),
                false => Err(self.shed("the deadline is too close for a password check", mean)),
            };
        }
        let (queue, slots) = match lane {
            Lane::Trusted => (&self.waiting[0], self.shared_slots + 1),
            Lane::Other => (&self.waiting[1], self.shared_slots.max(1)),
        };
        let ahead = queue.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(queue);
        let expected = mean.saturating_mul(u32::try_from(ahead / slots + 1).unwrap_or(u32::MAX));
        if ahead >= self.max_waiting {
            return Err(self.shed("too many waiting", expected));
        }
        if !in_time(expected) {
            return Err(self.shed("it would not finish before the deadline", expected));
        }
        let acquire = async {
            match lane {
                Lane::Trusted => tokio::select! {
                    p = self.reserved.clone().acquire_owned() => p,
                    p = self.shared.clone().acquire_owned() => p,
                },
                Lane::Other => self.shared.clone().acquire_owned().await,
            }
        };
        let permit = match deadline {
            // Waiting past the point where one hash still fits is pointless.
            Some(d) => {
                let latest = d.checked_sub(mean).unwrap_or(d);
                tokio::time::timeout_at(latest.into(), acquire)
                    .await
                    .map_err(|_| self.shed("it would not finish before the deadline", mean))?
            }
            None => acquire.await,
        };
        permit.map_err(|_| Status::internal("password hashing is shut down"))
    }

    /// A slot for one hash that can finish before `deadline` (see the module doc), or
    /// ResourceExhausted with a Retry-After when there is none to be had in time.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        lane: Lane,
        deadline: Option<Instant>,
    ) -> Result<Slot, Status> {
        let permit = self.slot(lane, deadline).await?;
        Ok(Slot {
            hasher: self.clone(),
            permit,
        })
    }

    /// A new PHC hash of `password`.
    pub(crate) async fn hash(
        self: &Arc<Self>,
        lane: Lane,
        deadline: Option<Instant>,
        password: String,
    ) -> Result<String, Status> {
        self.admit(lane, deadline).await?.hash(password).await
    }
}

/// A hashing slot, held until the hash it runs has ended.
pub(crate) struct Slot {
    hasher: Arc<Hasher>,
    permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Runs `job` on the blocking pool; the blocking task owns the slot, so the slot is
    /// free only when the job has ended, whether or not its caller still waits.
    async fn run<T: Send + 'static>(
        self,
        job: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let Slot { hasher, permit } = self;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let start = Instant::now();
            let out = job(&hasher.argon);
            hasher.learn(start.elapsed());
            out
        })
        .await
        .map_err(|_| Status::internal("password hashing failed"))
    }

    /// A new PHC hash of `password`.
    pub(crate) async fn hash(self, password: String) -> Result<String, Status> {
        self.run(move |argon| {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| {
            tracing::error!(error = %e, "argon2 hashing failed");
            Status::internal("password hashing failed")
        })
    }

    /// Whether `password` matches the PHC string `hash` (argon2 compares in constant
    /// time).
    pub(crate) async fn verify(self, password: String, hash: String) -> Result<bool, Status> {
        let r = self
            .run(move |argon| argon.verify_password(password.as_bytes(), hash.as_str()))
            .await?;
        match r {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
            Err(e) => {
                tracing::error!(error = %e, "stored password hash is unusable");
                Err(Status::internal("password verification failed"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{Algorithm, Params, Version};

    /// A pool of cheap hashes (tests), `slots` at once.
    fn pool(slots: usize, max_waiting: usize, mean: Duration) -> Arc<Hasher> {
        let params = Params::new(8, 1, 1, None).unwrap();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        Arc::new(Hasher::new(argon, slots, max_waiting, mean))
    }

    #[tokio::test]
    async fn an_attempt_that_cannot_finish_in_time_is_shed_before_it_runs() {
        // One hash is believed to take a second; a caller with 100 ms left is shed.
        let h = pool(2, 8, Duration::from_secs(1));
        let deadline = Some(Instant::now() + Duration::from_millis(100));
        let e = h.hash(Lane::Other, deadline, "x".into()).await.unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert!(e.retry_after_ms >= 1000, "{e:?}");
        // With time enough it runs.
        h.hash(Lane::Other, None, "x".into()).await.unwrap();
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_a_flood_leaves_the_trusted_lane_a_slot() {
        let h = pool(2, 2, Duration::from_millis(1));
        // The shared slot is held, as by a running hash.
        let held = h.shared.clone().try_acquire_owned().unwrap();
        // Two "other" attempts wait; the third is shed at once.
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(Lane::Other, None, "x".into()).await })
            })
            .collect();
        while h.waiting[1].load(Ordering::Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
        let e = h.hash(Lane::Other, None, "x".into()).await.unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted, "{e:?}");
        // A trusted attempt still runs, on the reserved slot.
        let hash = h.hash(Lane::Trusted, None, "pw".into()).await.unwrap();
        let slot = h.admit(Lane::Trusted, None).await.unwrap();
        assert!(slot.verify("pw".into(), hash).await.unwrap());
        drop(held);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_slot_is_held_until_the_hash_ends_even_when_its_caller_left() {
        let h = pool(1, 8, Duration::from_millis(1));
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let caller = {
            let h = h.clone();
            tokio::spawn(async move {
                h.admit(Lane::Other, None)
                    .await
                    .unwrap()
                    .run(move |_| {
                        started_tx.send(()).unwrap();
                        gate.recv().unwrap();
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        // The caller gives up (its deadline dropped the request): the job still runs,
        // and its slot is still taken.
        caller.abort();
        let _ = caller.await;
        assert_eq!(h.shared.available_permits(), 0, "the slot went back early");
        release.send(()).unwrap();
        h.hash(Lane::Other, None, "x".into()).await.unwrap();
        assert_eq!(h.shared.available_permits(), 1);
    }
}
