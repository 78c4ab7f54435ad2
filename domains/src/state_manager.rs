//! state-manager: player save data as a small versioned document store. It owns objects
//! addressed by `(player_id, key)` holding opaque bytes plus a content type, optimistic
//! concurrency on `expected_version`, a per-object size limit and a bounded history in
//! which a Delete is a tombstone version. It does not interpret the bytes, index their
//! content, or keep anything beyond the last `history_depth` versions of an object.
//!
//! One table, `state_manager.objects`, holds every row of an object next to each other
//! (keys are bytes; ids never contain `\0`, which is a control character), so a write
//! dirties one neighbourhood of the B-tree instead of one per table: durable throughput is
//! bounded by the pages each group commit writes, and this layout measured ~3× faster
//! than a table per kind of row.
//! - `player_id \0 key \0 \x00` → [`Head`], the metadata of the live version. Only live
//!   objects have a head; List seeks from head to head.
//! - `player_id \0 key \0 \x01 !version` → [`VersionRecord`] (metadata and the data of
//!   that version, tombstones included). `!version` is `u64::MAX - version` big-endian, so a forward scan yields
//!   newest first: History is one scan, and the first row is the newest version even
//!   after a Delete (which is how a re-created object continues the version sequence —
//!   versions are never reused).
//!
//! Every write decides its version check and prunes history inside one store closure, so
//! concurrent writers are serialised there and a refused write changes nothing.

use aicore_proto::aicore::state_manager::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, HistoryRequest, HistoryResponse,
    ListRequest, ListResponse, ObjectMetadata, PutRequest, PutResponse, StateManagerHandler,
    VersionInfo,
};
use aicore_proto::{Code, Request, Status};

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, validate};

/// The one table; the names below say which kind of row an access means.
const OBJECTS: &str = "state_manager.objects";
const VERSIONS: &str = OBJECTS;
/// Row tags after `player_id \0 key \0`.
const TAG_HEAD: u8 = 0;
const TAG_VERSION: u8 = 1;
/// Past every row of an object.
const TAG_END: u8 = 3;

/// Longest key the contract allows (`PutRequest.key`: 1–256 bytes).
const CONTRACT_MAX_KEY_BYTES: usize = 256;
/// Most superseded versions one write prunes (more only after a lowered `history_depth`;
/// later writes prune the rest).
const PRUNE_BATCH: usize = 256;
/// Replies of Put and Delete kept for replays of their idempotency keys.
const IDEMPOTENCY: Idempotency = Idempotency::new("state_manager.idempotency");

/// Configuration of state-manager (`[domains.state_manager]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateManagerConfig {
    /// Largest accepted object, in bytes of `data`; a larger Put is ResourceExhausted.
    pub max_object_bytes: usize,
    /// Versions kept per object, tombstones included (at least 1 is always kept). The write
    /// that pushes a version out of this window deletes it in the same transaction.
    pub history_depth: u32,
    /// Longest object key in bytes; at most 256 (the contract's limit), larger is capped.
    pub max_key_bytes: usize,
    /// Page size of List and History when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of List and History; larger requests are capped to it.
    pub max_page_size: u32,
}

impl Default for StateManagerConfig {
    fn default() -> Self {
        StateManagerConfig {
            max_object_bytes: 256 * 1024,
            history_depth: 16,
            max_key_bytes: CONTRACT_MAX_KEY_BYTES,
            default_page_size: 50,
            max_page_size: 500,
        }
    }
}

/// The live version of an object (value of `state_manager.objects`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Head {
    /// The live version.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Length of its data.
    #[prost(uint64, tag = "2")]
    pub size_bytes: u64,
    /// Its content type.
    #[prost(string, tag = "3")]
    pub content_type: String,
    /// When it was written.
    #[prost(message, optional, tag = "4")]
    pub updated_at: Option<prost_types::Timestamp>,
    /// The oldest version row the object has (its rows are the run from here to
    /// `version`); 0 when not known (heads written before this field existed).
    #[prost(uint64, tag = "5")]
    pub oldest_version: u64,
}

/// One version of an object (value of `state_manager.versions`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRecord {
    /// The version number.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Length of its data (0 for a tombstone).
    #[prost(uint64, tag = "2")]
    pub size_bytes: u64,
    /// Its content type (empty for a tombstone).
    #[prost(string, tag = "3")]
    pub content_type: String,
    /// When it was written.
    #[prost(message, optional, tag = "4")]
    pub updated_at: Option<prost_types::Timestamp>,
    /// Whether it is the tombstone of a Delete.
    #[prost(bool, tag = "5")]
    pub deleted: bool,
    /// The object's content at this version (empty for a tombstone). Kept in the same
    /// row so a Put writes one row less (durable throughput is bounded by rows written).
    #[prost(bytes = "bytes", tag = "6")]
    pub data: bytes::Bytes,
}

/// The state-manager domain.
pub struct StateManager {
    ctx: Ctx,
    config: StateManagerConfig,
}

impl aicore_runtime::Domain for StateManager {
    type Config = StateManagerConfig;

    fn build(
        ctx: &Ctx,
        config: &StateManagerConfig,
    ) -> Result<std::sync::Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(std::sync::Arc::new(
            aicore_proto::aicore::state_manager::v1::StateManagerServer(std::sync::Arc::new(
                StateManager::new(ctx.clone(), config.clone()),
            )),
        ))
    }
}

impl StateManager {
    /// The domain on a context.
    pub fn new(ctx: Ctx, config: StateManagerConfig) -> Self {
        StateManager { ctx, config }
    }

    fn config(&self) -> &StateManagerConfig {
        &self.config
    }

    fn check_key(&self, key: &str, field: &str) -> Result<(), Status> {
        let max = self.config().max_key_bytes.min(CONTRACT_MAX_KEY_BYTES);
        if key.is_empty() || key.len() > max {
            return Err(Status::invalid(field, format!("must be 1 to {max} bytes")));
        }
        if key.chars().any(char::is_control) {
            return Err(Status::invalid(
                field,
                "must not contain control characters",
            ));
        }
        Ok(())
    }

    fn page_size(&self, requested: i32) -> Result<usize, Status> {
        let c = self.config();
        paging::page_size(requested, c.default_page_size, c.max_page_size)
    }

    fn history_depth(&self) -> u64 {
        u64::from(self.config().history_depth.max(1))
    }
}

fn object_key(player_id: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(player_id.len() + 1 + key.len() + 10);
    k.extend_from_slice(player_id.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `player_id \0 key \0 tag`.
fn tagged(player_id: &str, key: &str, tag: u8) -> Vec<u8> {
    let mut k = object_key(player_id, key);
    k.push(0);
    k.push(tag);
    k
}

/// The key of an object's head row.
fn head_key(player_id: &str, key: &str) -> Vec<u8> {
    tagged(player_id, key, TAG_HEAD)
}

/// The prefix of every version row of one object.
fn versions_prefix(player_id: &str, key: &str) -> Vec<u8> {
    tagged(player_id, key, TAG_VERSION)
}

fn version_key(prefix: &[u8], version: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&(u64::MAX - version).to_be_bytes());
    k
}

fn version_of(row_key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = row_key
        .get(row_key.len().checked_sub(8)?..)?
        .try_into()
        .ok()?;
    Some(u64::MAX - u64::from_be_bytes(tail))
}

fn metadata(player_id: &str, key: &str, h: &Head) -> ObjectMetadata {
    ObjectMetadata {
        player_id: player_id.to_string(),
        key: key.to_string(),
        version: h.version,
        size_bytes: h.size_bytes,
        content_type: h.content_type.clone(),
        updated_at: h.updated_at,
    }
}

// Page tokens are opaque to clients: base64url of a one-byte kind tag and the position of
// the next row, so a token of one RPC is refused by another.
const LIST_TOKEN: u8 = b'L';
const HISTORY_TOKEN: u8 = b'H';

/// Deletes the versions of one object that fall out of the `depth` newest once `newest`
/// is written (its row already), and returns the oldest version left, 0 if not known.
///
/// An object's version rows are always one run `oldest..=newest`: versions are written
/// one after another and pruned from the oldest. So with `oldest` known (kept in the
/// head) the rows to delete are known without reading them — a Put writes its rows and
/// reads nothing but the head. When it is not known (an object re-created after a
/// Delete, a head written before heads kept it) the rows are scanned.
fn prune(
    tx: &mut Tx<'_>,
    prefix: &[u8],
    oldest: u64,
    newest: u64,
    depth: u64,
) -> Result<u64, Status> {
    let keep_from = newest.saturating_sub(depth - 1).max(1);
    if oldest > 0 {
        let end = keep_from.min(oldest.saturating_add(PRUNE_BATCH as u64));
        for v in oldest..end {
            tx.delete(VERSIONS, &version_key(prefix, v));
        }
        return Ok(oldest.max(end));
    }
    // Rows at or below `keep_from`, newest first.
    let rows = tx.scan(
        VERSIONS,
        prefix,
        &version_key(prefix, keep_from),
        PRUNE_BATCH + 1,
    )?;
    let mut kept = None;
    let mut deleted = 0;
    for (k, _) in &rows {
        match version_of(k) {
            Some(v) if v >= keep_from => kept = Some(v),
            _ if deleted < PRUNE_BATCH => {
                tx.delete(VERSIONS, k);
                deleted += 1;
            }
            _ => return Ok(0),
        }
    }
    // Every older row is gone; `keep_from` itself is the oldest if it exists (else the
    // run starts above it, at a version this scan did not see).
    Ok(kept.unwrap_or(0))
}

/// The newest version ever written of an object (live or tombstone), if any remains.
fn newest_version(tx: &Tx<'_>, prefix: &[u8]) -> Result<Option<u64>, Status> {
    Ok(tx
        .scan(VERSIONS, prefix, prefix, 1)?
        .first()
        .and_then(|(k, _)| version_of(k)))
}

impl StateManagerHandler for StateManager {
    async fn put(&self, request: Request<PutRequest>) -> Result<PutResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["admin", "service"])?;
        self.check_key(&req.key, "key")?;
        let content_type = validate::content_type(&req.content_type)?;
        validate::max_bytes(
            req.data.len(),
            self.config().max_object_bytes,
            "data",
            "per-object",
        )?;
        let depth = self.history_depth();
        let now = self.ctx.now_ts();
        let scope = format!("{}\0put", req.player_id);
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "put", &scope, &req)?;
        let (player_id, key, data, expected) =
            (req.player_id, req.key, req.data, req.expected_version);
        keyed
            .write(move |tx| {
                let okey = head_key(&player_id, &key);
                let prefix = versions_prefix(&player_id, &key);
                let live = tx.get_msg::<Head>(OBJECTS, &okey)?;
                match (expected, &live) {
                    (None, _) | (Some(0), None) => {}
                    (Some(n), Some(h)) if h.version == n => {}
                    (Some(0), Some(h)) => {
                        return Err(Status::conflict(format!(
                            "the object exists at version {}; expected_version 0 only creates",
                            h.version
                        )));
                    }
                    (Some(n), Some(h)) => {
                        return Err(Status::conflict(format!(
                            "the object is at version {}, not the expected {n}",
                            h.version
                        )));
                    }
                    (Some(n), None) => {
                        return Err(Status::conflict(format!(
                            "the object does not exist (expected version {n})"
                        )));
                    }
                }
                let last = match &live {
                    Some(h) => h.version,
                    None => newest_version(tx, &prefix)?.unwrap_or(0),
                };
                let version = last
                    .checked_add(1)
                    .ok_or_else(|| Status::internal("version overflow"))?;
                // A first version ever starts the run of rows; otherwise the head
                // knows where it starts (0: prune finds out).
                let oldest = match &live {
                    Some(h) => h.oldest_version,
                    None if last == 0 => version,
                    None => 0,
                };
                let size_bytes = data.len() as u64;
                tx.put_msg(
                    VERSIONS,
                    &version_key(&prefix, version),
                    &VersionRecord {
                        version,
                        size_bytes,
                        content_type: content_type.clone(),
                        updated_at: Some(now),
                        deleted: false,
                        data,
                    },
                );
                let head = Head {
                    version,
                    size_bytes,
                    content_type,
                    updated_at: Some(now),
                    oldest_version: prune(tx, &prefix, oldest, version, depth)?,
                };
                tx.put_msg(OBJECTS, &okey, &head);
                Ok(PutResponse {
                    metadata: Some(metadata(&player_id, &key, &head)),
                })
            })
            .await
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<GetResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["admin", "service"])?;
        self.check_key(&req.key, "key")?;
        let store = &self.ctx.store;
        let prefix = versions_prefix(&req.player_id, &req.key);
        if req.version != 0 {
            let vkey = version_key(&prefix, req.version);
            let not_found = || {
                Status::not_found(format!(
                    "version {} of the object does not exist (never written, deleted or pruned)",
                    req.version
                ))
            };
            let rec = store
                .get_msg_cached::<VersionRecord>(VERSIONS, &vkey)?
                .filter(|r| !r.deleted)
                .ok_or_else(not_found)?;
            let data = rec.data;
            let head = Head {
                version: rec.version,
                size_bytes: rec.size_bytes,
                content_type: rec.content_type,
                updated_at: rec.updated_at,
                oldest_version: 0,
            };
            return Ok(GetResponse {
                metadata: Some(metadata(&req.player_id, &req.key, &head)),
                data,
            });
        }
        let okey = head_key(&req.player_id, &req.key);
        // Hot objects: the reply built from the head and the row it points to, cached with
        // the head (a version row never changes, and is pruned only after a newer head).
        let hit = store.get_derived(OBJECTS, &okey, |raw| {
            let head: Head = aicore_runtime::store::decode(OBJECTS, raw.clone())?;
            Ok(store
                .get_msg::<VersionRecord>(VERSIONS, &version_key(&prefix, head.version))?
                .map(|rec| {
                    let reply = GetResponse {
                        metadata: Some(metadata(&req.player_id, &req.key, &head)),
                        data: rec.data,
                    };
                    // The data is the version row's: the reply keeps all of it alive.
                    let bytes = prost::Message::encoded_len(&reply);
                    (reply, bytes)
                }))
        })?;
        if let Some(reply) = hit {
            return Ok((*reply).clone());
        }
        // The head and the version are two reads; a write landing between them may prune
        // the version just read (only with a tiny history depth), so read the head again.
        for _ in 0..3 {
            let head = store
                .get_msg_cached::<Head>(OBJECTS, &okey)?
                .ok_or_else(|| Status::not_found("the object does not exist"))?;
            if let Some(rec) = store
                .get_msg_cached::<VersionRecord>(VERSIONS, &version_key(&prefix, head.version))?
            {
                return Ok(GetResponse {
                    metadata: Some(metadata(&req.player_id, &req.key, &head)),
                    data: rec.data,
                });
            }
        }
        Err(Status::new(
            Code::Unavailable,
            "the object kept changing while being read; retry",
        ))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<DeleteResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["admin", "service"])?;
        self.check_key(&req.key, "key")?;
        if req.expected_version == Some(0) {
            return Err(Status::invalid(
                "expected_version",
                "0 means create-only and cannot apply to a delete; give the live version or none",
            ));
        }
        let depth = self.history_depth();
        let now = self.ctx.now_ts();
        let scope = format!("{}\0delete", req.player_id);
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "delete", &scope, &req)?;
        let (player_id, key, expected) = (req.player_id, req.key, req.expected_version);
        keyed
            .write(move |tx| {
                let okey = head_key(&player_id, &key);
                let prefix = versions_prefix(&player_id, &key);
                let head = tx
                    .get_msg::<Head>(OBJECTS, &okey)?
                    .ok_or_else(|| Status::not_found("the object does not exist"))?;
                if let Some(n) = expected
                    && n != head.version
                {
                    return Err(Status::conflict(format!(
                        "the object is at version {}, not the expected {n}",
                        head.version
                    )));
                }
                let tombstone = head
                    .version
                    .checked_add(1)
                    .ok_or_else(|| Status::internal("version overflow"))?;
                tx.delete(OBJECTS, &okey);
                tx.put_msg(
                    VERSIONS,
                    &version_key(&prefix, tombstone),
                    &VersionRecord {
                        version: tombstone,
                        size_bytes: 0,
                        content_type: String::new(),
                        updated_at: Some(now),
                        deleted: true,
                        data: bytes::Bytes::new(),
                    },
                );
                prune(tx, &prefix, head.oldest_version, tombstone, depth)?;
                Ok(DeleteResponse {
                    deleted_version: head.version,
                    tombstone_version: tombstone,
                })
            })
            .await
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<ListResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["admin", "service"])?;
        if !req.prefix.is_empty() {
            self.check_key(&req.prefix, "prefix")?;
        }
        let limit = self.page_size(req.page_size)?;
        let scan_prefix = object_key(&req.player_id, &req.prefix);
        let key_start = req.player_id.len() + 1;
        let mut from = if req.page_token.is_empty() {
            scan_prefix.clone()
        } else {
            let next = paging::decode_token(LIST_TOKEN, &req.page_token)?;
            if !next.starts_with(req.prefix.as_bytes()) {
                return Err(Status::invalid(
                    "page_token",
                    "belongs to a listing with another prefix",
                ));
            }
            let next = String::from_utf8(next).map_err(|_| paging::bad_token())?;
            object_key(&req.player_id, &next)
        };
        // Seek from object to object: each step finds the first row at or after `from`;
        // a head row is a live object, anything else (the history of a deleted object)
        // is skipped; either way the next seek starts past that object's rows.
        let store = &self.ctx.store;
        let mut objects = Vec::new();
        let mut next_page_token = String::new();
        loop {
            let Some((k, v)) = store.scan(OBJECTS, &scan_prefix, &from, 1)?.pop() else {
                break;
            };
            let rest = &k[key_start..];
            let Some(end) = rest.iter().position(|b| *b == 0) else {
                return Err(Status::internal("malformed object row"));
            };
            let key = String::from_utf8_lossy(&rest[..end]).into_owned();
            if rest.get(end + 1) == Some(&TAG_HEAD) {
                if objects.len() == limit {
                    next_page_token = paging::encode_token(LIST_TOKEN, key.as_bytes());
                    break;
                }
                let head: Head = aicore_runtime::store::decode(OBJECTS, v)?;
                objects.push(metadata(&req.player_id, &key, &head));
            }
            from = tagged(&req.player_id, &key, TAG_END);
        }
        Ok(ListResponse {
            objects,
            next_page_token,
        })
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<HistoryResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["admin", "service"])?;
        self.check_key(&req.key, "key")?;
        let limit = self.page_size(req.page_size)?;
        let prefix = versions_prefix(&req.player_id, &req.key);
        let from = if req.page_token.is_empty() {
            prefix.clone()
        } else {
            let raw = paging::decode_token(HISTORY_TOKEN, &req.page_token)?;
            let next: [u8; 8] = raw
                .try_into()
                .map_err(|_| Status::invalid("page_token", "is not a token this RPC returned"))?;
            version_key(&prefix, u64::from_be_bytes(next))
        };
        let mut rows = self.ctx.store.scan(VERSIONS, &prefix, &from, limit + 1)?;
        if rows.is_empty() && req.page_token.is_empty() {
            return Err(Status::not_found("the object has no history"));
        }
        let next_page_token = paging::next_token(&mut rows, limit, HISTORY_TOKEN, |(k, _)| {
            version_of(k).map(|v| v.to_be_bytes().to_vec())
        });
        let versions = rows
            .into_iter()
            .map(|(_, v)| {
                let r: VersionRecord = aicore_runtime::store::decode(VERSIONS, v)?;
                Ok(VersionInfo {
                    version: r.version,
                    size_bytes: r.size_bytes,
                    content_type: r.content_type,
                    updated_at: r.updated_at,
                    deleted: r.deleted,
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(HistoryResponse {
            versions,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use aicore_proto::{Caller, Metadata};
    use bytes::Bytes;

    use super::*;

    fn domain(edit: impl FnOnce(&mut StateManagerConfig)) -> Arc<StateManager> {
        let (ctx, _clock) = Ctx::for_tests();
        let mut config = StateManagerConfig::default();
        edit(&mut config);
        Arc::new(StateManager::new(ctx, config))
    }

    fn trusted<T>(body: T) -> Request<T> {
        Request::new(body)
    }

    fn as_player<T>(player: &str, body: T) -> Request<T> {
        Request::new(body).on_behalf_of(player, &["player"])
    }

    fn put_req(player: &str, key: &str, data: &str, expected: Option<u64>) -> PutRequest {
        PutRequest {
            player_id: player.to_string(),
            key: key.to_string(),
            data: Bytes::from(data.to_string()),
            content_type: "application/json".to_string(),
            expected_version: expected,
            ..Default::default()
        }
    }

    async fn put(
        sm: &StateManager,
        key: &str,
        data: &str,
        expected: Option<u64>,
    ) -> Result<u64, Status> {
        let r = sm.put(trusted(put_req("p1", key, data, expected))).await?;
        Ok(r.metadata.map(|m| m.version).unwrap_or_default())
    }

    async fn get(sm: &StateManager, key: &str, version: u64) -> Result<(u64, Bytes), Status> {
        let r = sm
            .get(trusted(GetRequest {
                player_id: "p1".into(),
                key: key.into(),
                version,
            }))
            .await?;
        Ok((r.metadata.map(|m| m.version).unwrap_or_default(), r.data))
    }

    async fn history(sm: &StateManager, key: &str) -> Vec<VersionInfo> {
        sm.history(trusted(HistoryRequest {
            player_id: "p1".into(),
            key: key.into(),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .versions
    }

    #[tokio::test]
    async fn put_then_get_returns_data_and_metadata() {
        let sm = domain(|_| {});
        let r = sm
            .put(trusted(put_req("p1", "saves/slot1", "{\"hp\":3}", None)))
            .await
            .unwrap();
        let m = r.metadata.unwrap();
        assert_eq!((m.version, m.size_bytes), (1, 8));
        assert_eq!(m.content_type, "application/json");
        let g = sm
            .get(trusted(GetRequest {
                player_id: "p1".into(),
                key: "saves/slot1".into(),
                version: 0,
            }))
            .await
            .unwrap();
        assert_eq!(g.data.as_ref(), b"{\"hp\":3}");
        assert_eq!(g.metadata.unwrap(), m);
        assert_eq!(put(&sm, "saves/slot1", "{}", None).await.unwrap(), 2);
        assert_eq!(get(&sm, "saves/slot1", 0).await.unwrap().1.as_ref(), b"{}");
        // Default content type, bad content type.
        let mut req = put_req("p1", "raw", "x", None);
        req.content_type.clear();
        let m = sm.put(trusted(req)).await.unwrap().metadata.unwrap();
        assert_eq!(m.content_type, "application/octet-stream");
        let mut req = put_req("p1", "raw", "x", None);
        req.content_type = "not a mime".into();
        let e = sm.put(trusted(req)).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, "content_type");
    }

    #[tokio::test]
    async fn bad_ids_are_refused_naming_the_field() {
        let sm = domain(|_| {});
        for (player, key, field) in [
            ("", "k", "player_id"),
            ("p\0x", "k", "player_id"),
            ("p1", "", "key"),
            ("p1", "a\0b", "key"),
            ("p1", &"k".repeat(257), "key"),
        ] {
            let e = sm
                .put(trusted(put_req(player, key, "x", None)))
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument);
            assert_eq!(e.field_violations[0].field, field);
        }
    }

    #[tokio::test]
    async fn create_only_conflicts_on_existing_but_recreates_after_delete() {
        let sm = domain(|_| {});
        assert_eq!(put(&sm, "k", "a", Some(0)).await.unwrap(), 1);
        let e = put(&sm, "k", "b", Some(0)).await.unwrap_err();
        assert_eq!(e.code, Code::Conflict);
        assert_eq!(get(&sm, "k", 0).await.unwrap(), (1, Bytes::from("a")));
        sm.delete(trusted(DeleteRequest {
            player_id: "p1".into(),
            key: "k".into(),
            expected_version: None,
            ..Default::default()
        }))
        .await
        .unwrap();
        // Versions are never reused: the re-created object continues after the tombstone.
        assert_eq!(put(&sm, "k", "c", Some(0)).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn expected_version_mismatch_conflicts_and_writes_nothing() {
        let sm = domain(|_| {});
        put(&sm, "k", "v1", None).await.unwrap();
        put(&sm, "k", "v2", Some(1)).await.unwrap();
        let e = put(&sm, "k", "stale", Some(1)).await.unwrap_err();
        assert_eq!(e.code, Code::Conflict);
        assert_eq!(get(&sm, "k", 0).await.unwrap(), (2, Bytes::from("v2")));
        assert_eq!(history(&sm, "k").await.len(), 2);
        let e = put(&sm, "missing", "x", Some(4)).await.unwrap_err();
        assert_eq!(e.code, Code::Conflict);
        assert_eq!(
            get(&sm, "missing", 0).await.unwrap_err().code,
            Code::NotFound
        );
    }

    #[tokio::test]
    async fn oversized_object_is_refused_and_nothing_written() {
        let sm = domain(|c| c.max_object_bytes = 16);
        put(&sm, "k", &"a".repeat(16), None).await.unwrap();
        let e = put(&sm, "k", &"b".repeat(17), None).await.unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert_eq!(e.field_violations[0].field, "data");
        assert_eq!(get(&sm, "k", 0).await.unwrap().0, 1);
        assert_eq!(history(&sm, "k").await.len(), 1);
        // The default limit is 256 KiB.
        let sm = domain(|_| {});
        let big = "x".repeat(256 * 1024 + 1);
        assert_eq!(
            put(&sm, "big", &big, None).await.unwrap_err().code,
            Code::ResourceExhausted
        );
        assert_eq!(get(&sm, "big", 0).await.unwrap_err().code, Code::NotFound);
    }

    #[tokio::test]
    async fn history_is_newest_first_pruned_to_depth_and_versions_readable() {
        let sm = domain(|c| c.history_depth = 3);
        for i in 1..=5 {
            assert_eq!(put(&sm, "k", &format!("v{i}"), None).await.unwrap(), i);
        }
        let versions: Vec<u64> = history(&sm, "k").await.iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![5, 4, 3]);
        assert_eq!(get(&sm, "k", 4).await.unwrap(), (4, Bytes::from("v4")));
        assert_eq!(get(&sm, "k", 3).await.unwrap(), (3, Bytes::from("v3")));
        assert_eq!(get(&sm, "k", 2).await.unwrap_err().code, Code::NotFound);
        assert_eq!(get(&sm, "k", 9).await.unwrap_err().code, Code::NotFound);
        // Pruned data rows are gone too, not only the metadata.
        let prefix = versions_prefix("p1", "k");
        let rows = sm.ctx.store.scan(VERSIONS, &prefix, &prefix, 100).unwrap();
        assert_eq!(rows.len(), 3);
        let newest: VersionRecord =
            aicore_runtime::store::decode(VERSIONS, rows[0].1.clone()).unwrap();
        assert_eq!(newest.data, Bytes::from("v5"));
    }

    /// The same store under another history depth (as after a configuration change).
    fn with_depth(sm: &StateManager, depth: u32) -> StateManager {
        let mut config = sm.config.clone();
        config.history_depth = depth;
        StateManager::new(sm.ctx.clone(), config)
    }

    /// The version rows the store holds for `p1/key`, oldest first, and the head's idea
    /// of where they start.
    fn rows(sm: &StateManager, key: &str) -> (Vec<u64>, Option<u64>) {
        let prefix = versions_prefix("p1", key);
        let mut v: Vec<u64> = sm
            .ctx
            .store
            .scan(VERSIONS, &prefix, &prefix, 10_000)
            .unwrap()
            .iter()
            .filter_map(|(k, _)| version_of(k))
            .collect();
        v.reverse();
        let head = sm
            .ctx
            .store
            .get_msg::<Head>(OBJECTS, &head_key("p1", key))
            .unwrap()
            .map(|h| h.oldest_version);
        (v, head)
    }

    #[tokio::test]
    async fn pruning_follows_depth_changes_deletes_and_old_heads() {
        let sm = domain(|c| c.history_depth = 4);
        for _ in 0..10 {
            put(&sm, "k", "x", None).await.unwrap();
        }
        assert_eq!(rows(&sm, "k"), ((7..=10).collect(), Some(7)));
        // A raised depth keeps what is there and lets history grow.
        let deeper = with_depth(&sm, 8);
        for _ in 0..2 {
            put(&deeper, "k", "x", None).await.unwrap();
        }
        assert_eq!(rows(&sm, "k"), ((7..=12).collect(), Some(7)));
        for _ in 0..4 {
            put(&deeper, "k", "x", None).await.unwrap();
        }
        assert_eq!(rows(&sm, "k"), ((9..=16).collect(), Some(9)));
        // A lowered one prunes the backlog on the next write.
        let shallow = with_depth(&sm, 2);
        put(&shallow, "k", "x", None).await.unwrap();
        assert_eq!(rows(&sm, "k"), (vec![16, 17], Some(16)));
        // A Delete prunes too; the re-created object (no head: rows are scanned) goes on.
        shallow
            .delete(trusted(DeleteRequest {
                player_id: "p1".into(),
                key: "k".into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(rows(&sm, "k"), (vec![17, 18], None));
        assert_eq!(put(&shallow, "k", "x", None).await.unwrap(), 19);
        assert_eq!(rows(&sm, "k"), (vec![18, 19], Some(18)));
        // A head that does not know where its rows start (written before heads kept it).
        let okey = head_key("p1", "k");
        sm.ctx
            .store
            .write(move |tx| {
                let mut h = tx.get_msg::<Head>(OBJECTS, &okey)?.unwrap();
                h.oldest_version = 0;
                tx.put_msg(OBJECTS, &okey, &h);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(put(&shallow, "k", "x", None).await.unwrap(), 20);
        assert_eq!(rows(&sm, "k"), (vec![19, 20], Some(19)));
    }

    #[tokio::test]
    async fn one_write_prunes_at_most_a_batch_of_a_long_backlog() {
        let sm = domain(|c| c.history_depth = 400);
        let n = PRUNE_BATCH as u64 + 100;
        for _ in 0..n {
            put(&sm, "k", "x", None).await.unwrap();
        }
        let one = with_depth(&sm, 1);
        put(&one, "k", "x", None).await.unwrap();
        let (left, oldest) = rows(&sm, "k");
        assert_eq!(left.len() as u64, n + 1 - PRUNE_BATCH as u64);
        assert_eq!(oldest, Some(PRUNE_BATCH as u64 + 1));
        put(&one, "k", "x", None).await.unwrap();
        assert_eq!(rows(&sm, "k"), (vec![n + 2], Some(n + 2)));
    }

    #[tokio::test]
    async fn history_pages_newest_first_without_gaps() {
        let sm = domain(|_| {});
        for i in 1..=7 {
            put(&sm, "k", &format!("v{i}"), None).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let r = sm
                .history(trusted(HistoryRequest {
                    player_id: "p1".into(),
                    key: "k".into(),
                    page_size: 3,
                    page_token: token,
                }))
                .await
                .unwrap();
            assert!(r.versions.len() <= 3);
            seen.extend(r.versions.iter().map(|v| v.version));
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
    }

    #[tokio::test]
    async fn delete_then_get_is_not_found_and_history_shows_tombstone() {
        let sm = domain(|_| {});
        put(&sm, "k", "v1", None).await.unwrap();
        put(&sm, "k", "v2", None).await.unwrap();
        let del = |expected| {
            sm.delete(trusted(DeleteRequest {
                player_id: "p1".into(),
                key: "k".into(),
                expected_version: expected,
                ..Default::default()
            }))
        };
        assert_eq!(del(Some(1)).await.unwrap_err().code, Code::Conflict);
        assert_eq!(
            del(Some(0)).await.unwrap_err().field_violations[0].field,
            "expected_version"
        );
        let r = del(Some(2)).await.unwrap();
        assert_eq!((r.deleted_version, r.tombstone_version), (2, 3));
        assert_eq!(get(&sm, "k", 0).await.unwrap_err().code, Code::NotFound);
        assert_eq!(get(&sm, "k", 3).await.unwrap_err().code, Code::NotFound);
        assert_eq!(get(&sm, "k", 2).await.unwrap(), (2, Bytes::from("v2")));
        let h = history(&sm, "k").await;
        assert_eq!(h.len(), 3);
        assert!(h[0].deleted && h[0].version == 3 && h[0].size_bytes == 0);
        assert!(!h[1].deleted && h[1].version == 2);
        // Deleting again: nothing live to delete.
        assert_eq!(del(None).await.unwrap_err().code, Code::NotFound);
        // A conditional put on the deleted object only works as a create.
        assert_eq!(
            put(&sm, "k", "x", Some(3)).await.unwrap_err().code,
            Code::Conflict
        );
    }

    #[tokio::test]
    async fn list_by_prefix_pages_without_duplicates_or_gaps() {
        let sm = domain(|_| {});
        let mut expected = Vec::new();
        for i in 0..23 {
            let key = format!("saves/{i:02}");
            put(&sm, &key, "x", None).await.unwrap();
            expected.push(key);
        }
        put(&sm, "settings", "x", None).await.unwrap();
        put(&sm, "saves/gone", "x", None).await.unwrap();
        sm.delete(trusted(DeleteRequest {
            player_id: "p1".into(),
            key: "saves/gone".into(),
            expected_version: None,
            ..Default::default()
        }))
        .await
        .unwrap();
        // Another player's objects never show up.
        sm.put(trusted(put_req("p10", "saves/00", "x", None)))
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let r = sm
                .list(trusted(ListRequest {
                    player_id: "p1".into(),
                    prefix: "saves/".into(),
                    page_size: 5,
                    page_token: token,
                }))
                .await
                .unwrap();
            pages += 1;
            assert!(r.objects.len() <= 5);
            assert!(r.objects.iter().all(|o| o.player_id == "p1"));
            seen.extend(r.objects.into_iter().map(|o| o.key));
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(pages, 5);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
        assert_eq!(seen, expected);
        let e = sm
            .list(trusted(ListRequest {
                player_id: "p1".into(),
                prefix: "saves/".into(),
                page_size: 5,
                page_token: "garbage!".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.field_violations[0].field, "page_token");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_with_same_expected_version_exactly_one_wins() {
        let sm = domain(|_| {});
        put(&sm, "k", "base", None).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..32 {
            let sm = sm.clone();
            tasks.push(tokio::spawn(async move {
                sm.put(trusted(put_req("p1", "k", &format!("w{i}"), Some(1))))
                    .await
                    .map(|r| (i, r.metadata.map(|m| m.version)))
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(w) => winners.push(w),
                Err(e) => assert_eq!(e.code, Code::Conflict),
            }
        }
        assert_eq!(winners.len(), 1);
        let (i, version) = winners[0];
        assert_eq!(version, Some(2));
        assert_eq!(
            get(&sm, "k", 0).await.unwrap(),
            (2, Bytes::from(format!("w{i}")))
        );
        assert_eq!(history(&sm, "k").await.len(), 2);
    }

    #[tokio::test]
    async fn a_player_cannot_touch_another_players_data() {
        let sm = domain(|_| {});
        sm.put(as_player("alice", put_req("alice", "k", "mine", None)))
            .await
            .unwrap();
        let e = sm
            .put(as_player("mallory", put_req("alice", "k", "evil", None)))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        let e = sm
            .get(as_player(
                "mallory",
                GetRequest {
                    player_id: "alice".into(),
                    key: "k".into(),
                    version: 0,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        let e = sm
            .delete(as_player(
                "mallory",
                DeleteRequest {
                    player_id: "alice".into(),
                    key: "k".into(),
                    expected_version: None,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        let e = sm
            .list(as_player(
                "mallory",
                ListRequest {
                    player_id: "alice".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        // The owner still reads their data unchanged; a service principal may too.
        let mut req = Request {
            body: GetRequest {
                player_id: "alice".into(),
                key: "k".into(),
                version: 0,
            },
            meta: Metadata {
                caller: Some(Caller {
                    account_id: "svc".into(),
                    roles: vec!["service".into()],
                }),
                ..Default::default()
            },
        };
        assert_eq!(sm.get(req.clone()).await.unwrap().data.as_ref(), b"mine");
        req.meta.caller = Some(Caller {
            account_id: "alice".into(),
            roles: vec!["player".into()],
        });
        assert_eq!(sm.get(req).await.unwrap().data.as_ref(), b"mine");
    }

    #[tokio::test]
    async fn idempotent_put_and_delete_replay_the_first_reply() {
        let sm = domain(|_| {});
        let mut req = put_req("p1", "k", "first", None);
        req.idempotency_key = "save-1".into();
        let first = sm.put(trusted(req.clone())).await.unwrap();
        let again = sm.put(trusted(req.clone())).await.unwrap();
        assert_eq!(first, again);
        // The retry wrote no second version.
        assert_eq!(get(&sm, "k", 0).await.unwrap().0, 1);
        let mut changed = req.clone();
        changed.data = Bytes::from("other");
        assert_eq!(
            sm.put(trusted(changed)).await.unwrap_err().code,
            Code::Conflict
        );
        assert_eq!(get(&sm, "k", 0).await.unwrap(), (1, Bytes::from("first")));

        let del = DeleteRequest {
            player_id: "p1".into(),
            key: "k".into(),
            idempotency_key: "del-1".into(),
            ..Default::default()
        };
        let d1 = sm.delete(trusted(del.clone())).await.unwrap();
        // A replayed delete answers as the first did instead of NotFound.
        assert_eq!(sm.delete(trusted(del)).await.unwrap(), d1);
    }
}
