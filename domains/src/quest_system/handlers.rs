//! quest-system's handlers: defining and listing quests, and a player's way through one
//! (accept, progress, complete, abandon) with its log.

use super::*;

impl QuestSystemHandler for QuestSystem {
    async fn define_quest(
        &self,
        request: Request<DefineQuestRequest>,
    ) -> Result<DefineQuestResponse, Status> {
        let req = request.body;
        let mut quest = req
            .quest
            .ok_or_else(|| Status::invalid("quest", "is required"))?;
        self.validate(&quest)?;
        let expected = req.expected_version;
        let now = self.ctx.now_ts();
        self.ctx
            .store
            .write(move |tx| {
                let id = quest.quest_id.clone();
                let live = tx.get_msg::<Quest>(QUESTS, id.as_bytes())?;
                let current = live.as_ref().map(|q| q.version);
                validate::expected_version(expected, current.unwrap_or(0), "quest")?;
                quest.version = current.unwrap_or(0) + 1;
                quest.updated_at = Some(now);
                tx.put_msg(QUESTS, id.as_bytes(), &quest);
                tx.put_msg(VERSIONS, &version_key(&id, quest.version), &quest);
                Ok(DefineQuestResponse { quest: Some(quest) })
            })
            .await
    }

    async fn get_quest(
        &self,
        request: Request<GetQuestRequest>,
    ) -> Result<GetQuestResponse, Status> {
        let req = request.body;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        let quest = if req.version == 0 {
            self.latest(&req.quest_id)?
        } else {
            self.ctx
                .store
                .get_msg_cached::<Quest>(VERSIONS, &version_key(&req.quest_id, req.version))?
                .ok_or_else(|| {
                    Status::with_field(
                        Code::NotFound,
                        "version",
                        format!("quest `{}` has no version {}", req.quest_id, req.version),
                    )
                })?
        };
        Ok(GetQuestResponse { quest: Some(quest) })
    }

    async fn list_available(
        &self,
        request: Request<ListAvailableRequest>,
    ) -> Result<ListAvailableResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let limit = self.page_size(req.page_size)?;
        let options = own_authority(&meta);
        let mut cache = HashMap::new();
        let listing = paging::Listing {
            store: &self.ctx.store,
            table: QUESTS,
            prefix: b"",
            kind: LIST_TOKEN,
            limit,
            max_scan: self.config().max_scan.max(limit),
        };
        let mut page = paging::Page::start(listing, &req.page_token)?;
        while let Some((_, v)) = page.next_row()? {
            let quest: Quest = aicore_runtime::store::decode(QUESTS, v)?;
            let entry = self.entry(&req.player_id, &quest.quest_id)?;
            if !matches!(may_accept(entry.as_ref(), quest.repeatable), Ok(true)) {
                continue;
            }
            let unmet = self
                .unmet(&req.player_id, &quest, &mut cache, &options)
                .await?;
            if unmet.is_none() {
                page.keep(quest);
            }
        }
        let (quests, next_page_token) = page.finish();
        Ok(ListAvailableResponse {
            quests,
            next_page_token,
        })
    }

    async fn accept(&self, request: Request<AcceptRequest>) -> Result<AcceptResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let quest = self.latest(&req.quest_id)?;
        let entry = self.entry(&req.player_id, &req.quest_id)?;
        if !may_accept(entry.as_ref(), quest.repeatable)? {
            return Ok(AcceptResponse {
                player_quest: entry.and_then(|e| e.quest),
            });
        }
        let options = own_authority(&meta);
        if let Some(why) = self
            .unmet(&req.player_id, &quest, &mut HashMap::new(), &options)
            .await?
        {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!("prerequisites not met: {why}"),
            ));
        }
        let now = self.ctx.now_ts();
        let (player, quest_id) = (req.player_id, req.quest_id);
        self.ctx
            .store
            .write(move |tx| {
                let key = log_key(&player, &quest_id);
                let entry = tx.get_msg::<Entry>(LOG, &key)?;
                if !may_accept(entry.as_ref(), quest.repeatable)? {
                    return Ok(AcceptResponse {
                        player_quest: entry.and_then(|e| e.quest),
                    });
                }
                let mut entry = entry.unwrap_or_default();
                let old = entry.quest.take().unwrap_or_default();
                let mut pq = PlayerQuest {
                    player_id: player.clone(),
                    quest_id: quest_id.clone(),
                    quest_version: quest.version,
                    state: QuestState::Active as i32,
                    objectives: quest
                        .objectives
                        .iter()
                        .map(|o| ObjectiveProgress {
                            objective_id: o.objective_id.clone(),
                            current: 0,
                            target: o.target,
                            done: false,
                        })
                        .collect(),
                    completions: old.completions,
                    accepted_at: Some(now),
                    completed_at: old.completed_at,
                    updated_at: None,
                    version: old.version,
                };
                touch(&mut pq, now);
                entry.quest = Some(pq.clone());
                entry.completing = false;
                save_entry(tx, &mut entry)?;
                Ok(AcceptResponse {
                    player_quest: Some(pq),
                })
            })
            .await
    }

    async fn progress(
        &self,
        request: Request<ProgressRequest>,
    ) -> Result<ProgressResponse, Status> {
        let req = request.body;
        validate::player_id(&req.player_id, "player_id")?;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        validate::slug(&req.objective_id, "objective_id", MAX_QUEST_ID_CHARS)?;
        if req.delta < 1 {
            return Err(Status::invalid("delta", "must be at least 1"));
        }
        if req.idempotency_key.is_empty() {
            return Err(Status::invalid("idempotency_key", "is required"));
        }
        let now = self.ctx.now_ts();
        let scope = format!("{}\0{}", req.player_id, req.quest_id);
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "progress", &scope, &req)?;
        keyed
            .write(move |tx| {
                let mut entry = tx
                    .get_msg::<Entry>(LOG, &log_key(&req.player_id, &req.quest_id))?
                    .ok_or_else(|| illegal("progress", "QUEST_STATE_AVAILABLE"))?;
                let mut pq = entry.quest.clone().unwrap_or_default();
                if pq.state != QuestState::Active as i32 {
                    return Err(illegal("progress", state_name(pq.state)));
                }
                if entry.completing {
                    return Err(illegal("progress", "QUEST_STATE_ACTIVE (being completed)"));
                }
                let before = all_done(&pq);
                let objective = pq
                    .objectives
                    .iter_mut()
                    .find(|o| o.objective_id == req.objective_id)
                    .ok_or_else(|| {
                        Status::invalid("objective_id", "is not an objective of this quest")
                    })?;
                objective.current = objective
                    .current
                    .saturating_add(req.delta)
                    .min(objective.target);
                objective.done = objective.current >= objective.target;
                let all_objectives_done = !before && all_done(&pq);
                touch(&mut pq, now);
                entry.quest = Some(pq.clone());
                save_entry(tx, &mut entry)?;
                Ok(ProgressResponse {
                    player_quest: Some(pq),
                    all_objectives_done,
                })
            })
            .await
    }

    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<CompleteResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let (player, quest_id) = (req.player_id, req.quest_id);
        let key = log_key(&player, &quest_id);
        if self.entry(&player, &quest_id)?.is_none() {
            self.latest(&quest_id)?;
        }
        // 1. Mark the entry completing (or find it already completed: the first result).
        let now = self.ctx.now_ts();
        let k = key.clone();
        let marked = self
            .ctx
            .store
            .write(move |tx| mark_completing(tx, &k, now))
            .await?;
        let pq = match marked {
            Ok(pq) => pq,
            Err(first) => return Ok(first),
        };
        // 2. Grant the rewards of the version the player accepted.
        let quest = self
            .ctx
            .store
            .get_msg_cached::<Quest>(VERSIONS, &version_key(&quest_id, pq.quest_version))?
            .ok_or_else(|| Status::internal("the accepted quest version is missing"))?;
        let n = pq.completions + 1;
        let options = own_authority(&meta);
        let mut reward_transaction_ids = Vec::with_capacity(quest.rewards.len());
        for r in &quest.rewards {
            let grant = Grant {
                player_id: player.clone(),
                currency: r.currency.clone(),
                amount: r.amount,
                reason: format!("quest_reward:{quest_id}"),
                idempotency_key: reward_key(&player, &quest_id, &r.currency, n),
            };
            reward_transaction_ids.push(self.rewards.credit(grant, options.clone()).await?);
        }
        // 3. Record the completion and its event, once.
        let now = self.ctx.now_ts();
        let rewards = quest.rewards;
        self.ctx
            .store
            .write(move |tx| record_completion(tx, &key, n, now, rewards, reward_transaction_ids))
            .await
    }

    async fn abandon(&self, request: Request<AbandonRequest>) -> Result<AbandonResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        validate::slug(&req.quest_id, "quest_id", MAX_QUEST_ID_CHARS)?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        if self.entry(&req.player_id, &req.quest_id)?.is_none() {
            self.latest(&req.quest_id)?;
        }
        let now = self.ctx.now_ts();
        let key = log_key(&req.player_id, &req.quest_id);
        self.ctx
            .store
            .write(move |tx| {
                let mut entry = tx
                    .get_msg::<Entry>(LOG, &key)?
                    .ok_or_else(|| illegal("abandon", "QUEST_STATE_AVAILABLE"))?;
                let mut pq = entry.quest.clone().unwrap_or_default();
                if pq.state == QuestState::Abandoned as i32 {
                    return Ok(AbandonResponse {
                        player_quest: Some(pq),
                    });
                }
                if pq.state != QuestState::Active as i32 {
                    return Err(illegal("abandon", state_name(pq.state)));
                }
                if entry.completing {
                    return Err(illegal("abandon", "QUEST_STATE_ACTIVE (being completed)"));
                }
                pq.state = QuestState::Abandoned as i32;
                touch(&mut pq, now);
                entry.quest = Some(pq.clone());
                save_entry(tx, &mut entry)?;
                Ok(AbandonResponse {
                    player_quest: Some(pq),
                })
            })
            .await
    }

    async fn get_log(&self, request: Request<GetLogRequest>) -> Result<GetLogResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let mut states = HashSet::new();
        for (i, s) in req.states.iter().enumerate() {
            if !matches!(QuestState::try_from(*s), Ok(st) if st != QuestState::Unspecified) {
                return Err(Status::invalid(
                    &format!("states[{i}]"),
                    "must be a known state other than QUEST_STATE_UNSPECIFIED",
                ));
            }
            states.insert(*s);
        }
        let limit = self.page_size(req.page_size)?;
        let prefix = player_prefix(&req.player_id);
        let listing = paging::Listing {
            store: &self.ctx.store,
            table: RECENT,
            prefix: &prefix,
            kind: LOG_TOKEN,
            limit,
            max_scan: self.config().max_scan.max(limit),
        };
        let mut page = paging::Page::start(listing, &req.page_token)?;
        while let Some((k, _)) = page.next_row()? {
            // The recency key ends with `\0` quest_id after the 8-byte time.
            let quest_id = k.get(prefix.len() + 9..).unwrap_or_default();
            let quest_id = String::from_utf8_lossy(quest_id);
            let Some(pq) = self.entry(&req.player_id, &quest_id)?.and_then(|e| e.quest) else {
                continue;
            };
            if states.is_empty() || states.contains(&pq.state) {
                page.keep(pq);
            }
        }
        let (entries, next_page_token) = page.finish();
        Ok(GetLogResponse {
            entries,
            next_page_token,
        })
    }
}

/// Complete's first step: marks an active entry with every objective done as completing,
/// or finds it completed already (`Err`: the first result, answered again).
fn mark_completing(
    tx: &mut Tx<'_>,
    key: &[u8],
    now: prost_types::Timestamp,
) -> Result<Result<PlayerQuest, CompleteResponse>, Status> {
    let mut entry = tx
        .get_msg::<Entry>(LOG, key)?
        .ok_or_else(|| illegal("complete", "QUEST_STATE_AVAILABLE"))?;
    let mut pq = entry.quest.clone().unwrap_or_default();
    if pq.state == QuestState::Completed as i32 {
        return Ok(Err(CompleteResponse {
            player_quest: Some(pq),
            reward_transaction_ids: entry.reward_transaction_ids,
        }));
    }
    if pq.state != QuestState::Active as i32 {
        return Err(illegal("complete", state_name(pq.state)));
    }
    if !entry.completing {
        let open: Vec<&str> = pq
            .objectives
            .iter()
            .filter(|o| !o.done)
            .map(|o| o.objective_id.as_str())
            .collect();
        if !open.is_empty() {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!("objectives not done yet: {}", open.join(", ")),
            ));
        }
        entry.completing = true;
        touch(&mut pq, now);
        entry.quest = Some(pq.clone());
        save_entry(tx, &mut entry)?;
    }
    Ok(Ok(pq))
}

/// Complete's last step: records the completion with its reward transactions and queues
/// its event, once (a concurrent Complete that recorded it first wins).
fn record_completion(
    tx: &mut Tx<'_>,
    key: &[u8],
    n: u32,
    now: prost_types::Timestamp,
    rewards: Vec<Reward>,
    reward_transaction_ids: Vec<String>,
) -> Result<CompleteResponse, Status> {
    let mut entry = tx
        .get_msg::<Entry>(LOG, key)?
        .ok_or_else(|| Status::internal("the quest log entry vanished"))?;
    let mut pq = entry.quest.clone().unwrap_or_default();
    if !entry.completing {
        // A concurrent Complete recorded it first.
        return Ok(CompleteResponse {
            player_quest: Some(pq),
            reward_transaction_ids: entry.reward_transaction_ids,
        });
    }
    pq.state = QuestState::Completed as i32;
    pq.completions = n;
    pq.completed_at = Some(now);
    touch(&mut pq, now);
    entry.completing = false;
    entry.quest = Some(pq.clone());
    entry.reward_transaction_ids = reward_transaction_ids.clone();
    save_entry(tx, &mut entry)?;
    let event = QuestCompleted {
        player_quest: Some(pq.clone()),
        rewards,
        reward_transaction_ids: reward_transaction_ids.clone(),
    };
    tx.emit(&event)?;
    Ok(CompleteResponse {
        player_quest: Some(pq),
        reward_transaction_ids,
    })
}
