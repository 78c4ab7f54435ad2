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
pub use aicore_proto::internal::state_manager::{Head, VersionRecord};
use aicore_proto::{Code, Request, Status};

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, validate};

mod rows;

use rows::*;

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

// Page tokens are opaque to clients: base64url of a one-byte kind tag and the position of
// the next row, so a token of one RPC is refused by another.
const LIST_TOKEN: u8 = b'L';
const HISTORY_TOKEN: u8 = b'H';

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
                validate::expected_version(
                    expected,
                    live.as_ref().map_or(0, |h| h.version),
                    "object",
                )?;
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
                validate::expected_version(expected, head.version, "object")?;
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
mod tests;
