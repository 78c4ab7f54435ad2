//! Idempotency keys, for writes a client may retry: the first successful reply is stored
//! under the key in the same transaction as the write itself, so a replay returns that
//! reply and changes nothing, and the same key with different parameters is Conflict.
//! Records live in the domain's own table (`<domain>.idempotency`) for at least the
//! configured time (24 h by default); an expired record is treated as absent and replaced.
//! Failed writes record nothing, so a retry after a refusal is evaluated afresh.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aicore_proto::Status;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::store::{Store, Tx, decode};

/// Longest idempotency key accepted.
pub const MAX_KEY_CHARS: usize = 128;

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    /// SHA-256 of the request with its idempotency key cleared.
    #[prost(bytes = "vec", tag = "1")]
    fingerprint: Vec<u8>,
    /// The encoded first reply.
    #[prost(bytes = "vec", tag = "2")]
    reply: Vec<u8>,
    /// When it was stored, ms since the epoch.
    #[prost(uint64, tag = "3")]
    created_ms: u64,
}

/// The idempotency records of one domain.
#[derive(Clone, Copy)]
pub struct Idempotency {
    table: &'static str,
    ttl: Duration,
}

/// The fingerprint of a request to `rpc`: its RPC (so two RPCs sharing a key scope never
/// replay each other's replies) and its encoding with the idempotency key cleared by
/// `clear_key`.
pub fn fingerprint<M: Message + Clone>(
    rpc: &str,
    request: &M,
    clear_key: impl FnOnce(&mut M),
) -> Vec<u8> {
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

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Idempotency {
    /// Records in `table`, kept at least `ttl`.
    pub const fn new(table: &'static str, ttl: Duration) -> Self {
        Idempotency { table, ttl }
    }

    /// Runs `f` as one durable write, unless `key` (scoped by `scope`, e.g. the player)
    /// was already used: then returns the first reply, or Conflict when `fingerprint`
    /// differs. An empty key runs `f` unconditionally.
    pub async fn write<R, F>(
        &self,
        store: &Store,
        scope: &str,
        key: &str,
        fingerprint: Vec<u8>,
        now: SystemTime,
        f: F,
    ) -> Result<R, Status>
    where
        R: Message + Default + Send + 'static,
        F: for<'a> FnOnce(&mut Tx<'a>) -> Result<R, Status> + Send + 'static,
    {
        if key.is_empty() {
            return store.write(f).await;
        }
        check_key(key)?;
        let this = *self;
        let mut k = scope.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(key.as_bytes());
        let now_ms = millis(now);
        store
            .write(move |tx| {
                if let Some(rec) = tx.get_msg::<Record>(this.table, &k)?
                    && now_ms.saturating_sub(rec.created_ms) < this.ttl.as_millis() as u64
                {
                    if rec.fingerprint != fingerprint {
                        return Err(Status::conflict(
                            "this idempotency_key was used with different parameters",
                        ));
                    }
                    return decode(this.table, rec.reply.into());
                }
                let reply = f(tx)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use aicore_proto::Code;

    const IDEM: Idempotency = Idempotency::new("test.idempotency", Duration::from_secs(60));
    const T: &str = "test.counter";

    #[derive(Clone, PartialEq, prost::Message)]
    struct Count {
        #[prost(uint64, tag = "1")]
        n: u64,
    }

    async fn bump(store: &Store, key: &str, fp: &[u8], now: SystemTime) -> Result<Count, Status> {
        IDEM.write(store, "p1", key, fp.to_vec(), now, |tx| {
            let n = tx.get_msg::<Count>(T, b"c")?.map_or(0, |c| c.n) + 1;
            tx.put_msg(T, b"c", &Count { n });
            Ok(Count { n })
        })
        .await
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

    #[tokio::test]
    async fn bad_keys_are_refused_naming_the_field() {
        let s = Store::in_memory();
        let long = "x".repeat(MAX_KEY_CHARS + 1);
        let e = bump(&s, &long, b"a", SystemTime::now()).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, "idempotency_key");
        assert!(s.get_msg::<Count>(T, b"c").unwrap().is_none());
    }
}
