//! Idempotency keys, for writes a client may retry: the first successful reply is stored
//! under the key in the same transaction as the write itself, so a replay returns that
//! reply and changes nothing, and the same key with different parameters is Conflict.
//! Records live in the domain's own table (`<domain>.idempotency`) for at least the
//! configured time (24 h by default); an expired record is treated as absent and replaced.
//! Failed writes record nothing, so a retry after a refusal is evaluated afresh.
//!
//! Expired records are also removed: the table keeps an expiry index (rows under the
//! prefix `\0\0`, ordered by creation time; no record key starts so, since keys have no
//! control characters) and every new record removes up to [`PURGE_PER_WRITE`] expired
//! ones in the same transaction, so the table stays near what `ttl` worth of writes
//! holds without a background task.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aicore_proto::Status;
use prost::Message;
use sha2::{Digest, Sha256};

use aicore_proto::Keyed;

use crate::Ctx;
use crate::store::{Store, Tx, decode};

/// The shortest time records are kept, whatever the configuration says: a client's retry
/// of a money write must not be applied twice because a day passed.
pub const MIN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest idempotency key accepted.
pub const MAX_KEY_CHARS: usize = 128;
/// Expired records a new record removes (more than one, so a backlog shrinks).
pub const PURGE_PER_WRITE: usize = 2;
/// Prefix of the expiry index rows: `\0\0`, creation ms (big endian), record key.
const EXPIRY: &[u8] = b"\0\0";
/// Where the next purge starts in the expiry index (the last index row it removed, or
/// a newer row's own key when a clock set back wrote one below that). Scanning from the
/// index's start would step over every row purged since the store last flushed its
/// memory layers (deletions there until then): once records expire at the rate they
/// are written, every write would do so.
const PURGE_CURSOR: &[u8] = b"\0\x01";

fn expiry_key(created_ms: u64, record_key: &[u8]) -> Vec<u8> {
    let mut k = EXPIRY.to_vec();
    k.extend_from_slice(&created_ms.to_be_bytes());
    k.extend_from_slice(record_key);
    k
}

/// The first reply to a key (`proto/internal/runtime.proto`).
use aicore_proto::internal::runtime::IdempotencyRecord as Record;

/// A write prepared by [`Idempotency::prepare`].
pub struct KeyedWrite {
    idempotency: Idempotency,
    store: Store,
    scope: String,
    key: String,
    fingerprint: Vec<u8>,
    now: SystemTime,
    ttl: Duration,
}

impl KeyedWrite {
    /// The request's idempotency key (empty = none).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The reply stored for this key, if it is live: `Some(first reply)` for the same
    /// request, Conflict for a different one, `None` without a key or a live record. Lets
    /// a handler answer a retry before doing work outside the store (a model call) that
    /// [`KeyedWrite::write`] would then discard; `write` still decides races.
    pub fn replay<R: Message + Default>(&self) -> Result<Option<R>, Status> {
        if self.key.is_empty() {
            return Ok(None);
        }
        let k = record_key(&self.scope, &self.key);
        let Some(rec) = self.store.get_msg::<Record>(self.idempotency.table, &k)? else {
            return Ok(None);
        };
        let age = millis(self.now).saturating_sub(rec.created_ms);
        if age >= self.ttl.as_millis() as u64 {
            return Ok(None);
        }
        if rec.fingerprint != self.fingerprint {
            return Err(Status::conflict(
                "this idempotency_key was used with different parameters",
            ));
        }
        decode(self.idempotency.table, rec.reply.into()).map(Some)
    }

    /// Runs `f` as one durable write, unless the key was already used: then returns the
    /// first reply, or Conflict when the request differed. Without a key `f` always runs.
    pub async fn write<R, F>(self, f: F) -> Result<R, Status>
    where
        R: Message + Default + Send + 'static,
        F: for<'a> FnOnce(&mut Tx<'a>) -> Result<R, Status> + Send + 'static,
    {
        if self.key.is_empty() {
            return self.store.write(f).await;
        }
        self.idempotency
            .write_keyed(
                &self.store,
                &self.scope,
                &self.key,
                self.fingerprint,
                self.now,
                self.ttl,
                f,
            )
            .await
    }
}

/// The idempotency records of one domain.
#[derive(Clone, Copy)]
pub struct Idempotency {
    table: &'static str,
}

/// The fingerprint of a request to `rpc` carrying idempotency key `key`: its RPC (so two
/// RPCs sharing a key scope never replay each other's replies) and its encoding with the
/// key cleared by `clear_key`. Without a key nothing is recorded, so nothing is computed.
fn fingerprint<M: Message + Clone>(
    rpc: &str,
    request: &M,
    key: &str,
    clear_key: impl FnOnce(&mut M),
) -> Vec<u8> {
    if key.is_empty() {
        return Vec::new();
    }
    let mut r = request.clone();
    clear_key(&mut r);
    let mut h = Sha256::new();
    h.update(rpc.as_bytes());
    h.update([0]);
    h.update(r.encode_to_vec());
    h.finalize().to_vec()
}

/// Checks an idempotency key's shape (empty = none).
pub fn check_key(key: &str) -> Result<(), Status> {
    if key.chars().count() > MAX_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(Status::invalid(
            "idempotency_key",
            format!("must be at most {MAX_KEY_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// Where the record of `key` in `scope` lives: scope, NUL, key.
fn record_key(scope: &str, key: &str) -> Vec<u8> {
    let mut k = scope.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Idempotency {
    /// Records in `table` (`<domain>.idempotency`).
    pub const fn new(table: &'static str) -> Self {
        Idempotency { table }
    }

    /// Prepares one durable write of RPC `rpc` for `request`: checks its idempotency key
    /// (InvalidArgument naming `idempotency_key`) and fingerprints the request with the
    /// key cleared, so the request can be taken apart before [`KeyedWrite::write`] runs.
    /// The key is scoped by `scope` (e.g. the player) and kept `ctx.idempotency_ttl` (at
    /// least [`MIN_TTL`]).
    pub fn prepare<Q: Keyed>(
        &self,
        ctx: &Ctx,
        rpc: &str,
        scope: &str,
        request: &Q,
    ) -> Result<KeyedWrite, Status> {
        let key = request.idempotency_key().to_string();
        check_key(&key)?;
        let fingerprint = fingerprint(rpc, request, &key, Q::clear_idempotency_key);
        Ok(KeyedWrite {
            idempotency: *self,
            store: ctx.store.clone(),
            scope: scope.to_string(),
            key,
            fingerprint,
            now: ctx.clock.now(),
            ttl: ctx.idempotency_ttl.max(MIN_TTL),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_keyed<R, F>(
        &self,
        store: &Store,
        scope: &str,
        key: &str,
        fingerprint: Vec<u8>,
        now: SystemTime,
        ttl: Duration,
        f: F,
    ) -> Result<R, Status>
    where
        R: Message + Default + Send + 'static,
        F: for<'a> FnOnce(&mut Tx<'a>) -> Result<R, Status> + Send + 'static,
    {
        let this = *self;
        let k = record_key(scope, key);
        let now_ms = millis(now);
        let ttl_ms = ttl.as_millis() as u64;
        store
            .write(move |tx| {
                let old = tx.get_msg::<Record>(this.table, &k)?;
                if let Some(rec) = &old
                    && now_ms.saturating_sub(rec.created_ms) < ttl_ms
                {
                    if rec.fingerprint != fingerprint {
                        return Err(Status::conflict(
                            "this idempotency_key was used with different parameters",
                        ));
                    }
                    return decode(this.table, rec.reply.clone().into());
                }
                let reply = f(tx)?;
                if let Some(rec) = old {
                    tx.delete(this.table, &expiry_key(rec.created_ms, &k));
                }
                let index_row = expiry_key(now_ms, &k);
                this.purge(tx, now_ms.saturating_sub(ttl_ms), &k, &index_row)?;
                tx.put(this.table, &index_row, Vec::new());
                tx.put_msg(
                    this.table,
                    &k,
                    &Record {
                        fingerprint,
                        reply: reply.encode_to_vec(),
                        created_ms: now_ms,
                    },
                );
                Ok(reply)
            })
            .await
    }

    /// Removes up to [`PURGE_PER_WRITE`] records created before `cutoff_ms` (other than
    /// `keep`, the one being written) with their index rows, from the purge cursor on;
    /// `new_row` is the index row about to be written.
    fn purge(
        &self,
        tx: &mut Tx<'_>,
        cutoff_ms: u64,
        keep: &[u8],
        new_row: &[u8],
    ) -> Result<(), Status> {
        let cursor = tx.get(self.table, PURGE_CURSOR)?;
        let from = cursor.as_deref().unwrap_or(EXPIRY);
        let mut next = None;
        for (row, _) in tx.scan(self.table, EXPIRY, from, PURGE_PER_WRITE)? {
            let Some(at) = row.get(EXPIRY.len()..EXPIRY.len() + 8) else {
                continue;
            };
            let created = u64::from_be_bytes(at.try_into().unwrap_or_default());
            if created >= cutoff_ms {
                break;
            }
            let record = &row[EXPIRY.len() + 8..];
            if record != keep {
                tx.delete(self.table, record);
            }
            tx.delete(self.table, &row);
            next = Some(row);
        }
        // A row written below the cursor (the clock went back) must not be skipped.
        let next = match next {
            Some(n) if n.as_slice() > new_row => Some(new_row.to_vec()),
            None if cursor.as_deref().is_some_and(|c| c > new_row) => Some(new_row.to_vec()),
            n => n,
        };
        if let Some(n) = next {
            tx.put(self.table, PURGE_CURSOR, n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aicore_proto::Code;

    const IDEM: Idempotency = Idempotency::new("test.idempotency");

    /// The stored bytes of a kept reply do not change (data files hold them).
    #[test]
    fn records_keep_their_stored_bytes() {
        use prost::Message;
        let r = Record {
            fingerprint: vec![1],
            reply: vec![2],
            created_ms: 7,
        };
        assert_eq!(r.encode_to_vec(), [0x0a, 1, 1, 0x12, 1, 2, 0x18, 7]);
    }
    const T: &str = "test.counter";

    #[derive(Clone, PartialEq, prost::Message)]
    struct Count {
        #[prost(uint64, tag = "1")]
        n: u64,
    }

    async fn bump(store: &Store, key: &str, fp: &[u8], now: SystemTime) -> Result<Count, Status> {
        if key.is_empty() {
            return store.write(count).await;
        }
        check_key(key)?;
        let ttl = Duration::from_secs(60);
        IDEM.write_keyed(store, "p1", key, fp.to_vec(), now, ttl, count)
            .await
    }

    fn count(tx: &mut Tx<'_>) -> Result<Count, Status> {
        let n = tx.get_msg::<Count>(T, b"c")?.map_or(0, |c| c.n) + 1;
        tx.put_msg(T, b"c", &Count { n });
        Ok(Count { n })
    }

    #[tokio::test]
    async fn a_keyed_request_is_fingerprinted_without_its_key_and_kept_at_least_a_day() {
        use aicore_proto::aicore::world_state::v1::SetRequest;
        let (mut ctx, clock) = Ctx::for_tests();
        // A configured TTL below the floor is raised to it.
        ctx.idempotency_ttl = Duration::from_secs(60);
        let req = |data: &'static [u8], key: &str| SetRequest {
            key: "fact".into(),
            data: bytes::Bytes::from_static(data),
            idempotency_key: key.into(),
            ..Default::default()
        };
        let set = |r: SetRequest| {
            let w = IDEM.prepare(&ctx, "set", "fact", &r);
            async move { w?.write(count).await }
        };
        assert_eq!(set(req(b"a", "k")).await.unwrap().n, 1);
        clock.advance(Duration::from_secs(23 * 3600));
        assert_eq!(set(req(b"a", "k")).await.unwrap().n, 1);
        let e = set(req(b"b", "k")).await.unwrap_err();
        assert_eq!(e.code, Code::Conflict);
        // Another RPC with the same scope and key is not a replay of this one.
        let e = IDEM
            .prepare(&ctx, "delete", "fact", &req(b"a", "k"))
            .unwrap()
            .write(count)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Conflict);
        // Without a key every call writes.
        assert_eq!(set(req(b"a", "")).await.unwrap().n, 2);
        clock.advance(Duration::from_secs(2 * 3600));
        assert_eq!(set(req(b"a", "k")).await.unwrap().n, 3);
    }

    #[tokio::test]
    async fn replay_returns_the_first_reply_and_writes_nothing() {
        let s = Store::in_memory();
        let now = SystemTime::now();
        assert_eq!(bump(&s, "k1", b"a", now).await.unwrap().n, 1);
        assert_eq!(bump(&s, "k1", b"a", now).await.unwrap().n, 1);
        assert_eq!(s.get_msg::<Count>(T, b"c").unwrap().unwrap().n, 1);
        // Different parameters under the same key: Conflict, nothing written.
        assert_eq!(
            bump(&s, "k1", b"b", now).await.unwrap_err().code,
            Code::Conflict
        );
        // No key, or another key: a new write.
        assert_eq!(bump(&s, "", b"a", now).await.unwrap().n, 2);
        assert_eq!(bump(&s, "k2", b"a", now).await.unwrap().n, 3);
        // After the TTL the key is free again.
        let later = now + Duration::from_secs(61);
        assert_eq!(bump(&s, "k1", b"a", later).await.unwrap().n, 4);
    }

    /// The records and index rows of the table (not the purge cursor).
    fn rows(s: &Store) -> Vec<(Vec<u8>, bytes::Bytes)> {
        let mut rows = s.scan(IDEM.table, &[], &[], 1000).unwrap();
        rows.retain(|(k, _)| k != PURGE_CURSOR);
        rows
    }

    #[tokio::test]
    async fn expired_records_are_removed_by_later_writes() {
        let s = Store::in_memory();
        let t0 = SystemTime::now();
        for i in 0..5 {
            bump(&s, &format!("k{i}"), b"a", t0).await.unwrap();
        }
        // Five records, five index rows.
        assert_eq!(rows(&s).len(), 10);
        // Within the TTL nothing is removed.
        bump(&s, "k5", b"a", t0 + Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(rows(&s).len(), 12);
        // After it, each new record removes up to two expired ones, oldest first.
        let later = t0 + Duration::from_secs(61);
        bump(&s, "k6", b"a", later).await.unwrap();
        let keys: Vec<Vec<u8>> = rows(&s)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with(EXPIRY))
            .collect();
        assert_eq!(keys.len(), 5, "{keys:?}");
        assert!(!keys.contains(&b"p1\0k0".to_vec()));
        assert!(!keys.contains(&b"p1\0k1".to_vec()));
        bump(&s, "k7", b"a", later).await.unwrap();
        bump(&s, "k8", b"a", later).await.unwrap();
        // k0..k4 are gone; k5 (30 s later) is not expired yet; k6..k8 remain.
        assert_eq!(rows(&s).len(), 8);
        // Reusing an expired key whose record is still there replaces it and its index
        // row: no orphan index rows.
        let much_later = later + Duration::from_secs(120);
        bump(&s, "k8", b"a", much_later).await.unwrap();
        let index = rows(&s)
            .into_iter()
            .filter(|(k, _)| k.starts_with(EXPIRY))
            .count();
        let records = rows(&s).len() - index;
        assert_eq!(index, records);
    }

    #[tokio::test]
    async fn a_record_written_after_the_clock_went_back_is_still_purged() {
        let s = Store::in_memory();
        let t0 = SystemTime::now();
        bump(&s, "a", b"a", t0).await.unwrap();
        bump(&s, "b", b"a", t0).await.unwrap();
        // Both expire and are purged by a write 2 minutes on; the cursor is past them.
        let t1 = t0 + Duration::from_secs(120);
        bump(&s, "c", b"a", t1).await.unwrap();
        assert_eq!(rows(&s).len(), 2);
        // The clock goes back past both: a record below the cursor.
        bump(&s, "d", b"a", t0 - Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(rows(&s).len(), 4);
        // Once both have expired, later writes remove them, the older one included.
        let t2 = t1 + Duration::from_secs(120);
        bump(&s, "e", b"a", t2).await.unwrap();
        let keys: Vec<Vec<u8>> = rows(&s).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.contains(&b"p1\0e".to_vec()));
    }

    #[tokio::test]
    async fn bad_keys_are_refused_naming_the_field() {
        let s = Store::in_memory();
        let long = "x".repeat(MAX_KEY_CHARS + 1);
        let e = bump(&s, &long, b"a", SystemTime::now()).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, "idempotency_key");
        assert!(s.get_msg::<Count>(T, b"c").unwrap().is_none());
    }
}
