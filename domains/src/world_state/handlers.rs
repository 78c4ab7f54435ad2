//! world-state's handlers: reading, setting, deleting and listing facts, snapshots at a
//! revision, and Watch streams.

use super::*;

impl WorldStateHandler for WorldState {
    async fn get(&self, request: Request<GetRequest>) -> Result<GetResponse, Status> {
        let req = request.body;
        check_key(&req.key, "key", false)?;
        let fact = self
            .ctx
            .store
            .get_msg_cached::<Fact>(FACTS, req.key.as_bytes())?
            .ok_or_else(|| Status::not_found(format!("no fact `{}`", req.key)))?;
        Ok(GetResponse { fact: Some(fact) })
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<SetResponse, Status> {
        let req = request.body;
        check_key(&req.key, "key", false)?;
        let content_type = aicore_runtime::validate::content_type(&req.content_type)?;
        validate::max_bytes(
            req.data.len(),
            self.config().max_fact_bytes,
            "data",
            "per-fact",
        )?;
        let retention = self.config().change_log_retention;
        let now = self.ctx.now_ts();
        let scope = format!("set\0{}", req.key);
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "set", &scope, &req)?;
        let (key, data, expected) = (req.key, req.data, req.expected_version);
        let reply = keyed
            .write(move |tx| {
                let live = tx.get_msg::<Fact>(FACTS, key.as_bytes())?;
                validate::expected_version(
                    expected,
                    live.as_ref().map_or(0, |f| f.version),
                    "fact",
                )?;
                let last = match &live {
                    Some(f) => f.version,
                    None => tx
                        .get_msg::<Tombstone>(TOMBSTONES, key.as_bytes())?
                        .map_or(0, |t| t.version),
                };
                let version = last
                    .checked_add(1)
                    .ok_or_else(|| Status::internal("version overflow"))?;
                let mut change = FactChange {
                    revision: 0,
                    kind: ChangeKind::Set as i32,
                    key: key.clone(),
                    old_version: live.as_ref().map_or(0, |f| f.version),
                    new_version: version,
                    fact: Some(Fact {
                        key: key.clone(),
                        data,
                        content_type,
                        version,
                        revision: 0,
                        updated_at: Some(now),
                    }),
                    changed_at: Some(now),
                };
                record_change(tx, &mut change, retention)?;
                let fact = change.fact.unwrap_or_default();
                tx.put_msg(FACTS, key.as_bytes(), &fact);
                tx.delete(TOMBSTONES, key.as_bytes());
                Ok(SetResponse { fact: Some(fact) })
            })
            .await?;
        self.announce(reply.fact.as_ref().map_or(0, |f| f.revision));
        Ok(reply)
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<DeleteResponse, Status> {
        let req = request.body;
        check_key(&req.key, "key", false)?;
        if req.expected_version == Some(0) {
            return Err(Status::invalid(
                "expected_version",
                "0 means create-only and cannot apply to a delete; give the live version or none",
            ));
        }
        let retention = self.config().change_log_retention;
        let now = self.ctx.now_ts();
        let scope = format!("delete\0{}", req.key);
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "delete", &scope, &req)?;
        let (key, expected) = (req.key, req.expected_version);
        let reply = keyed
            .write(move |tx| {
                let live = tx
                    .get_msg::<Fact>(FACTS, key.as_bytes())?
                    .ok_or_else(|| Status::not_found(format!("no fact `{key}`")))?;
                validate::expected_version(expected, live.version, "fact")?;
                let version = live
                    .version
                    .checked_add(1)
                    .ok_or_else(|| Status::internal("version overflow"))?;
                let mut change = FactChange {
                    revision: 0,
                    kind: ChangeKind::Delete as i32,
                    key: key.clone(),
                    old_version: live.version,
                    new_version: version,
                    fact: None,
                    changed_at: Some(now),
                };
                record_change(tx, &mut change, retention)?;
                tx.delete(FACTS, key.as_bytes());
                tx.put_msg(TOMBSTONES, key.as_bytes(), &Tombstone { version });
                Ok(DeleteResponse {
                    deleted_version: live.version,
                    revision: change.revision,
                })
            })
            .await?;
        self.announce(reply.revision);
        Ok(reply)
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<ListResponse, Status> {
        let req = request.body;
        check_key(&req.prefix, "prefix", true)?;
        let limit = self.page_size(req.page_size)?;
        let from = if req.page_token.is_empty() {
            req.prefix.as_bytes().to_vec()
        } else {
            let next = paging::decode_token(LIST_TOKEN, &req.page_token)?;
            if !next.starts_with(req.prefix.as_bytes()) {
                return Err(Status::invalid(
                    "page_token",
                    "belongs to a listing with another prefix",
                ));
            }
            next
        };
        let mut rows = self
            .ctx
            .store
            .scan(FACTS, req.prefix.as_bytes(), &from, limit + 1)?;
        let next_page_token =
            paging::next_token(&mut rows, limit, LIST_TOKEN, |(k, _)| Some(k.clone()));
        let facts = rows
            .into_iter()
            .map(|(_, v)| aicore_runtime::store::decode(FACTS, v))
            .collect::<Result<_, Status>>()?;
        Ok(ListResponse {
            facts,
            next_page_token,
        })
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<SnapshotResponse, Status> {
        let req = request.body;
        check_key(&req.prefix, "prefix", true)?;
        let (max_facts, max_bytes) = (
            self.config().snapshot_max_facts,
            self.config().snapshot_max_bytes,
        );
        let store = &self.ctx.store;
        let prefix = req.prefix.into_bytes();
        // One scan is one read transaction; if the revision is the same before and after
        // it, no change committed in between, so the scan is the world at that revision.
        let mut view = None;
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let before = current_revision(store)?;
            let rows = store.scan(FACTS, &prefix, &prefix, max_facts + 1)?;
            if current_revision(store)? == before {
                view = Some((before, rows));
                break;
            }
        }
        let (revision, rows) = match view {
            Some(v) => v,
            // Under a steady stream of writes: read inside the writer, which is serialised
            // with every change.
            None => {
                store
                    .write(move |tx| {
                        let revision = tx
                            .get_msg::<Meta>(META, META_KEY)?
                            .map_or(0, |m| m.revision);
                        Ok((revision, tx.scan(FACTS, &prefix, &prefix, max_facts + 1)?))
                    })
                    .await?
            }
        };
        if rows.len() > max_facts {
            return Err(Status::with_field(
                Code::ResourceExhausted,
                "prefix",
                format!("matches more than {max_facts} facts; narrow it or use List"),
            ));
        }
        let mut bytes = 0usize;
        let mut facts = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let f: Fact = aicore_runtime::store::decode(FACTS, v)?;
            bytes += f.data.len();
            if bytes > max_bytes {
                return Err(Status::with_field(
                    Code::ResourceExhausted,
                    "prefix",
                    format!("matches more than {max_bytes} bytes of data; narrow it or use List"),
                ));
            }
            facts.push(f);
        }
        Ok(SnapshotResponse { revision, facts })
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Streaming<WatchResponse>, Status> {
        let Request { body: req, meta } = request;
        check_key(&req.prefix, "prefix", true)?;
        let c = self.config().clone();
        let store = self.ctx.store.clone();
        let latest = current_revision(&store)?;
        let next = if req.from_revision == 0 {
            latest + 1
        } else {
            if req.from_revision <= latest
                && oldest_retained(&store)?.is_none_or(|o| req.from_revision < o)
            {
                return Err(too_old(req.from_revision));
            }
            req.from_revision
        };
        // Hints only (see the module doc): a subscription that fails just leaves the poll.
        let events = match &self.ctx.client {
            Some(client) => client.nats().subscribe(CHANGED_SUBJECT).await.ok(),
            None => None,
        };
        let max_end = Instant::now() + Duration::from_millis(c.watch_max_duration_ms);
        let end = match meta.deadline {
            Some(d) => max_end.min(d.into()),
            None => max_end,
        };
        let watcher = Watcher {
            store,
            prefix: req.prefix,
            keys_only: req.keys_only,
            next,
            caught_up: false,
            pending: VecDeque::new(),
            local: self.committed.subscribe(),
            events,
            poll: Duration::from_millis(c.watch_poll_interval_ms.max(10)),
            idle: (c.watch_idle_timeout_ms > 0)
                .then(|| Duration::from_millis(c.watch_idle_timeout_ms)),
            last_delivery: Instant::now(),
            end,
            batch: c.watch_batch.max(1),
            done: false,
        };
        Ok(futures::stream::unfold(watcher, |mut w| async move {
            let item = w.next_item().await?;
            Some((item, w))
        })
        .boxed())
    }
}
