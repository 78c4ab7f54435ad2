//! world-state: shared world facts (`castle.gate` = `open`) with per-key versions and
//! compare-and-set, prefix listing, consistent snapshots and a change feed. Every change
//! gets a world-wide revision (one more than the previous change, across all keys), is
//! appended to a bounded change log and emits `evt.world.changed`, all in the transaction
//! that writes the fact, so the fact, the log and the event never disagree. It does not
//! interpret fact data (other domains read facts as scalars themselves) and keeps no
//! history beyond the change log's retention.
//!
//! Tables (fact keys never contain control characters, so `\0` never occurs in them):
//! - `world_state.facts`: key → [`Fact`] (data included): the live facts.
//! - `world_state.tombstones`: key → [`Tombstone`], the version a Delete gave the key, so a
//!   re-created fact continues the version sequence. One small row per deleted key.
//! - `world_state.changes`: big-endian revision → [`FactChange`] (with the fact's data
//!   for SET), the last `change_log_retention` changes; the write that appends one prunes
//!   what falls out of the window in the same transaction.
//! - `world_state.meta`: `revision` → [`Meta`], the latest revision.
//! - `world_state.idempotency`: replies of Set/Delete kept for their idempotency keys.
//!
//! Watch replays from the change log and then follows it: it is woken by this process's
//! own commits (a `tokio::sync::watch` channel), by `evt.world.changed` on NATS (commits
//! of any other process writing the same world, once the outbox relay publishes them) and
//! by a poll interval as a floor, and each wake-up just reads the log on from the next
//! revision — the log is the truth, wake-ups are hints, so a missed or duplicated one
//! costs at most a poll interval and never a change. A stream ends at the caller's
//! deadline, after `watch_max_duration_ms`, after `watch_idle_timeout_ms` without a
//! change to deliver (each with the end marker: resume from the last revision + 1), or
//! with Unavailable when the service stops. NATS gives the server no signal that a client
//! went away, so these bounds are what stop publishing into a dead inbox.

use std::collections::VecDeque;
use std::time::Duration;

use aicore_proto::aicore::world_state::v1::{
    CaughtUp, ChangeKind, DeleteRequest, DeleteResponse, Fact, FactChange, GetRequest, GetResponse,
    ListRequest, ListResponse, SetRequest, SetResponse, SnapshotRequest, SnapshotResponse,
    WatchRequest, WatchResponse, WorldStateHandler, watch_response,
};
pub use aicore_proto::internal::world_state::{Meta, Tombstone};
use aicore_proto::{Code, Request, Status, Streaming};
use futures::StreamExt;
use tokio::time::Instant;

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::outbox::Emit;
use aicore_runtime::store::{Store, Tx};
use aicore_runtime::{Ctx, paging, validate};

mod handlers;
mod watch;

use watch::*;

const FACTS: &str = "world_state.facts";
const TOMBSTONES: &str = "world_state.tombstones";
const CHANGES: &str = "world_state.changes";
const META: &str = "world_state.meta";
const META_KEY: &[u8] = b"revision";
/// Replies of Set and Delete kept for replays of their idempotency keys.
const IDEMPOTENCY: Idempotency = Idempotency::new("world_state.idempotency");

/// The subject every change is published on (payload: [`FactChange`] without `fact`).
pub const CHANGED_SUBJECT: &str = "evt.world.changed";

/// Longest key the contract allows (`Fact.key`: 1–256 characters).
const MAX_KEY_CHARS: usize = 256;
/// Most change-log rows one write prunes (more only after a lowered retention; later
/// writes prune the rest).
const PRUNE_BATCH: usize = 256;
/// Optimistic attempts of a Snapshot before it reads inside the writer instead.
const SNAPSHOT_ATTEMPTS: usize = 3;
const LIST_TOKEN: u8 = b'W';

/// Configuration of world-state (`[domains.world_state]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorldStateConfig {
    /// Largest accepted fact, in bytes of `data`; a larger Set is ResourceExhausted.
    pub max_fact_bytes: usize,
    /// Changes kept in the change log (at least 1). A Watch from an older revision is
    /// FailedPrecondition. The log holds each SET's data, so its disk use is up to this
    /// many times the typical fact size.
    pub change_log_retention: u64,
    /// Page size of List when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of List; larger requests are capped to it.
    pub max_page_size: u32,
    /// Most facts one Snapshot returns; more is ResourceExhausted.
    pub snapshot_max_facts: usize,
    /// Most bytes of fact data one Snapshot returns; more is ResourceExhausted.
    pub snapshot_max_bytes: usize,
    /// Longest a Watch stream lives, in milliseconds, even if the caller's deadline is later.
    pub watch_max_duration_ms: u64,
    /// A Watch stream that had nothing to deliver for this long ends (0 = never), in
    /// milliseconds; the client resumes from its last revision + 1.
    pub watch_idle_timeout_ms: u64,
    /// How often a live Watch reads the change log even without a wake-up, in milliseconds.
    pub watch_poll_interval_ms: u64,
    /// Change-log rows a Watch reads at a time.
    pub watch_batch: usize,
}

impl Default for WorldStateConfig {
    fn default() -> Self {
        WorldStateConfig {
            max_fact_bytes: 256 * 1024,
            change_log_retention: 10_000,
            default_page_size: 100,
            max_page_size: 1000,
            snapshot_max_facts: 10_000,
            snapshot_max_bytes: 16 << 20,
            watch_max_duration_ms: 600_000,
            watch_idle_timeout_ms: 300_000,
            watch_poll_interval_ms: 1000,
            watch_batch: 256,
        }
    }
}

/// The world-state domain.
pub struct WorldState {
    ctx: Ctx,
    config: WorldStateConfig,
    /// The latest revision this process committed; wakes local watchers at once.
    committed: tokio::sync::watch::Sender<u64>,
}

impl WorldState {
    /// The domain on a context.
    pub fn new(ctx: Ctx, config: WorldStateConfig) -> Self {
        WorldState {
            ctx,
            config,
            committed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn config(&self) -> &WorldStateConfig {
        &self.config
    }

    fn page_size(&self, requested: i32) -> Result<usize, Status> {
        let c = self.config();
        paging::page_size(requested, c.default_page_size, c.max_page_size)
    }

    fn announce(&self, revision: u64) {
        self.committed.send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
    }
}

/// Checks a fact key (or, with `allow_empty`, a prefix).
fn check_key(key: &str, field: &str, allow_empty: bool) -> Result<(), Status> {
    let n = key.chars().count();
    if (n == 0 && !allow_empty) || n > MAX_KEY_CHARS {
        return Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_KEY_CHARS} characters"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Status::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// The latest committed revision.
fn current_revision(store: &Store) -> Result<u64, Status> {
    Ok(store
        .get_msg::<Meta>(META, META_KEY)?
        .map_or(0, |m| m.revision))
}

/// The oldest revision still in the change log, if any.
fn oldest_retained(store: &Store) -> Result<Option<u64>, Status> {
    match store.get_msg::<Meta>(META, META_KEY)? {
        None => Ok(None),
        Some(m) if m.oldest_change > 0 => Ok(Some(m.oldest_change)),
        Some(_) => Ok(store
            .scan(CHANGES, b"", b"", 1)?
            .first()
            .and_then(|(k, _)| revision_of(k))),
    }
}

fn revision_of(row_key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(row_key.try_into().ok()?))
}

/// Takes the next revision, appends `change` (given that revision) to the change log,
/// prunes the log to `retention` and emits the event — all in `tx`.
///
/// The rows to prune are known from where the log starts (kept in the meta row), so a
/// write reads no change rows: a scan from the log's start would step over every row
/// pruned since the store last flushed its memory layers (they are deletions there until
/// then), which made sustained Sets slow down to a crawl.
fn record_change(tx: &mut Tx<'_>, change: &mut FactChange, retention: u64) -> Result<(), Status> {
    let meta = tx.get_msg::<Meta>(META, META_KEY)?.unwrap_or_default();
    let revision = meta
        .revision
        .checked_add(1)
        .ok_or_else(|| Status::internal("revision overflow"))?;
    change.revision = revision;
    if let Some(f) = change.fact.as_mut() {
        f.revision = revision;
    }
    tx.put_msg(CHANGES, &revision.to_be_bytes(), change);
    // Revisions from `keep_from` on stay.
    let keep_from = revision.saturating_sub(retention.max(1)) + 1;
    let oldest_change = match meta.oldest_change {
        0 if meta.revision == 0 => revision,
        0 => {
            // Not known: find where the log starts while pruning it.
            let mut oldest = 0;
            let mut deleted = 0;
            for (k, _) in tx.scan(CHANGES, b"", b"", PRUNE_BATCH + 1)? {
                match revision_of(&k) {
                    Some(r) if r >= keep_from => {
                        oldest = r;
                        break;
                    }
                    _ if deleted == PRUNE_BATCH => break,
                    _ => {
                        tx.delete(CHANGES, &k);
                        deleted += 1;
                    }
                }
            }
            oldest
        }
        oldest => {
            let end = keep_from.min(oldest.saturating_add(PRUNE_BATCH as u64));
            for r in oldest..end {
                tx.delete(CHANGES, &r.to_be_bytes());
            }
            oldest.max(end)
        }
    };
    tx.put_msg(
        META,
        META_KEY,
        &Meta {
            revision,
            oldest_change,
        },
    );
    let event = FactChange {
        fact: None,
        ..change.clone()
    };
    tx.emit(&event)
}

impl aicore_runtime::Domain for WorldState {
    type Config = WorldStateConfig;

    fn build(
        ctx: &Ctx,
        config: &WorldStateConfig,
    ) -> Result<std::sync::Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(std::sync::Arc::new(
            aicore_proto::aicore::world_state::v1::WorldStateServer(std::sync::Arc::new(
                WorldState::new(ctx.clone(), config.clone()),
            )),
        ))
    }
}

#[cfg(test)]
mod tests;
