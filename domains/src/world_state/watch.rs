//! A Watch stream: catches up from the change log, then follows new revisions; one that
//! falls behind what the log retains is told so.

use super::*;

pub(super) fn too_old(from_revision: u64) -> Status {
    Status::with_field(
        Code::FailedPrecondition,
        "from_revision",
        format!(
            "revision {from_revision} is older than the retained change history; take a \
             Snapshot and watch from its revision + 1"
        ),
    )
}

/// The state of one Watch stream (driven by `unfold`, so dropping the stream drops it
/// all: no task outlives the client's stream).
pub(super) struct Watcher {
    pub(super) store: Store,
    pub(super) prefix: String,
    pub(super) keys_only: bool,
    /// The next revision to read from the log.
    pub(super) next: u64,
    pub(super) caught_up: bool,
    pub(super) pending: VecDeque<WatchResponse>,
    pub(super) local: tokio::sync::watch::Receiver<u64>,
    pub(super) events: Option<async_nats::Subscriber>,
    pub(super) poll: Duration,
    pub(super) idle: Option<Duration>,
    pub(super) last_delivery: Instant,
    pub(super) end: Instant,
    pub(super) batch: usize,
    pub(super) done: bool,
}

impl Watcher {
    /// Reads the log from `next` into `pending` until it holds something or the log ends.
    pub(super) fn fill(&mut self) -> Result<(), Status> {
        loop {
            let rows = self
                .store
                .scan(CHANGES, b"", &self.next.to_be_bytes(), self.batch)?;
            let full = rows.len() == self.batch;
            for (k, v) in rows {
                let Some(revision) = revision_of(&k) else {
                    continue;
                };
                if revision > self.next {
                    // The rows between were pruned while this watcher was behind.
                    return Err(too_old(self.next));
                }
                self.next = revision + 1;
                let mut change: FactChange = aicore_runtime::store::decode(CHANGES, v)?;
                if !change.key.starts_with(&self.prefix) {
                    continue;
                }
                if self.keys_only {
                    change.fact = None;
                }
                self.pending.push_back(WatchResponse {
                    event: Some(watch_response::Event::Change(change)),
                });
            }
            if !full || !self.pending.is_empty() {
                return Ok(());
            }
        }
    }

    pub(super) async fn next_item(&mut self) -> Option<Result<WatchResponse, Status>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(item) = self.pending.pop_front() {
                self.last_delivery = Instant::now();
                return Some(Ok(item));
            }
            if Instant::now() >= self.end {
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
            if !self.pending.is_empty() {
                continue;
            }
            if !self.caught_up {
                self.caught_up = true;
                let latest = match current_revision(&self.store) {
                    Ok(r) => r,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                };
                self.last_delivery = Instant::now();
                return Some(Ok(WatchResponse {
                    event: Some(watch_response::Event::CaughtUp(CaughtUp {
                        revision: latest.min(self.next - 1),
                    })),
                }));
            }
            let give_up = match self.idle {
                Some(idle) => self.end.min(self.last_delivery + idle),
                None => self.end,
            };
            let (local, events) = (&mut self.local, &mut self.events);
            let local_wake = async {
                if local.changed().await.is_err() {
                    // The domain is gone; the poll still reads the log until the end.
                    std::future::pending::<()>().await;
                }
            };
            let nats_wake = async {
                let woken = match events.as_mut() {
                    Some(s) => s.next().await.is_some(),
                    None => false,
                };
                if !woken {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(give_up) => return None,
                _ = local_wake => {}
                _ = nats_wake => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}
