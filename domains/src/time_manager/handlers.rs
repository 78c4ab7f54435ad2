//! time-manager's handlers: reading and changing the clock (scale, pause, resume, set) and
//! scheduling, cancelling and listing timers.

use super::*;

pub(super) fn check_reason(reason: &str) -> Result<(), Status> {
    if reason.chars().count() > 512 {
        return Err(Status::invalid("reason", "must be at most 512 characters"));
    }
    Ok(())
}

pub(super) fn check_game_seconds(v: i64, field: &str) -> Result<(), Status> {
    if !(0..=MAX_GAME_SECONDS).contains(&v) {
        return Err(Status::invalid(
            field,
            format!("must be 0 to {MAX_GAME_SECONDS} game seconds"),
        ));
    }
    Ok(())
}

impl TimeManagerHandler for TimeManager {
    async fn now(&self, request: Request<NowRequest>) -> Result<NowResponse, Status> {
        let c = self.clock().await?;
        let at = match request.body.at {
            Some(ts) => {
                let t = SystemTime::try_from(ts)
                    .map_err(|_| Status::invalid("at", "is not a valid timestamp"))?;
                unix_ms(t)
            }
            None => unix_ms(self.ctx.clock.now()),
        };
        Ok(NowResponse {
            clock: Some(self.params().clock_proto(&c, at)),
        })
    }

    async fn set_scale(
        &self,
        request: Request<SetScaleRequest>,
    ) -> Result<SetScaleResponse, Status> {
        let Request { body: req, meta } = request;
        let scale = req.scale;
        if !(scale.is_finite() && scale > 0.0 && scale <= MAX_SCALE) {
            return Err(Status::invalid(
                "scale",
                format!("must be > 0 and <= {MAX_SCALE}"),
            ));
        }
        let (clock, _) = self
            .change_clock(&meta, "set_scale", String::new(), move |c| {
                let changed = c.scale != scale;
                c.scale = scale;
                changed
            })
            .await?;
        Ok(SetScaleResponse { clock: Some(clock) })
    }

    async fn pause(&self, request: Request<PauseRequest>) -> Result<PauseResponse, Status> {
        let Request { body: req, meta } = request;
        let (clock, _) = self
            .change_clock(&meta, "pause", req.reason, |c| {
                let changed = !c.paused;
                c.paused = true;
                changed
            })
            .await?;
        Ok(PauseResponse { clock: Some(clock) })
    }

    async fn resume(&self, request: Request<ResumeRequest>) -> Result<ResumeResponse, Status> {
        let Request { body: req, meta } = request;
        let (clock, _) = self
            .change_clock(&meta, "resume", req.reason, |c| {
                let changed = c.paused;
                c.paused = false;
                changed
            })
            .await?;
        Ok(ResumeResponse { clock: Some(clock) })
    }

    async fn set_time(&self, request: Request<SetTimeRequest>) -> Result<SetTimeResponse, Status> {
        let Request { body: req, meta } = request;
        check_game_seconds(req.game_seconds, "game_seconds")?;
        let target_ms = req.game_seconds * 1000;
        let (clock, timers_fired) = self
            .change_clock(&meta, "set_time", req.reason, move |c| {
                c.anchor_game_ms = target_ms;
                true
            })
            .await?;
        Ok(SetTimeResponse {
            clock: Some(clock),
            timers_fired,
        })
    }

    async fn schedule(
        &self,
        request: Request<ScheduleRequest>,
    ) -> Result<ScheduleResponse, Status> {
        let Request { body: req, meta } = request;
        check_game_seconds(req.fire_at_seconds, "fire_at_seconds")?;
        if req.repeat_every_seconds != 0
            && !(MIN_REPEAT_SECONDS..=MAX_GAME_SECONDS).contains(&req.repeat_every_seconds)
        {
            return Err(Status::invalid(
                "repeat_every_seconds",
                format!("must be 0 (once) or at least {MIN_REPEAT_SECONDS} game seconds"),
            ));
        }
        let n = req.name.chars().count();
        if n == 0 || n > MAX_NAME_CHARS || req.name.chars().any(char::is_control) {
            return Err(Status::invalid(
                "name",
                format!("must be 1 to {MAX_NAME_CHARS} characters without control characters"),
            ));
        }
        if req.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Status::with_field(
                Code::ResourceExhausted,
                "payload",
                format!(
                    "is {} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes",
                    req.payload.len()
                ),
            ));
        }
        let content_type = aicore_runtime::validate::content_type(&req.content_type)?;
        if req.idempotency_key.is_empty() {
            return Err(Status::invalid(
                "idempotency_key",
                "is required (a retry with the same key returns the first timer)",
            ));
        }
        let owner = meta
            .caller
            .as_ref()
            .map(|c| c.account_id.clone())
            .unwrap_or_default();
        let dps = self.config().days_per_season;
        let now = self.ctx.now_ts();
        let scope = format!("schedule\0{owner}");
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "schedule", &scope, &req)?;
        let reply = keyed
            .write(move |tx| {
                let timer = Timer {
                    schedule_id: aicore_runtime::new_id("tmr"),
                    fire_at: Some(game_time(req.fire_at_seconds, dps)),
                    repeat_every_seconds: req.repeat_every_seconds,
                    name: req.name,
                    payload: req.payload,
                    content_type,
                    owner,
                    created_at: Some(now),
                };
                tx.put_msg(TIMERS, timer.schedule_id.as_bytes(), &timer);
                put_due(tx, due_key(req.fire_at_seconds, &timer.schedule_id))?;
                Ok(ScheduleResponse { timer: Some(timer) })
            })
            .await?;
        self.wake.notify_one();
        Ok(reply)
    }

    async fn cancel_schedule(
        &self,
        request: Request<CancelScheduleRequest>,
    ) -> Result<CancelScheduleResponse, Status> {
        let req = request.body;
        let id = req.schedule_id;
        // Characters, not bytes: what the field's rule and so the OpenAPI document say.
        if id.is_empty() || id.chars().count() > 128 || id.chars().any(char::is_control) {
            return Err(Status::invalid(
                "schedule_id",
                "must be 1 to 128 characters without control characters",
            ));
        }
        let cancelled = self
            .ctx
            .store
            .write(move |tx| {
                let Some(t) = tx.get_msg::<Timer>(TIMERS, id.as_bytes())? else {
                    return Ok(false);
                };
                let at = t.fire_at.map_or(0, |g| g.seconds);
                tx.delete(TIMERS, id.as_bytes());
                tx.delete(DUE, &due_key(at, &id));
                Ok(true)
            })
            .await?;
        Ok(CancelScheduleResponse { cancelled })
    }

    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Result<ListSchedulesResponse, Status> {
        let req = request.body;
        let c = self.config();
        let limit = paging::page_size(req.page_size, c.default_page_size, c.max_page_size)?;
        let store = &self.ctx.store;
        // No live key is below `due_from`: start there rather than step over the rows of
        // timers fired since the store last flushed.
        let mut from = due_start(store.get(TICKER, DUE_FROM)?);
        if !req.page_token.is_empty() {
            from = from.max(paging::decode_token(LIST_TOKEN, &req.page_token)?);
        }
        let mut timers = Vec::with_capacity(limit);
        let batch = 256;
        loop {
            let rows = store.scan(DUE, b"", &from, batch)?;
            let full = rows.len() == batch;
            for (key, _) in rows {
                if timers.len() == limit {
                    return Ok(ListSchedulesResponse {
                        timers,
                        next_page_token: paging::encode_token(LIST_TOKEN, &key),
                    });
                }
                from = key.clone();
                from.push(0);
                let Some((_, id)) = due_of(&key) else {
                    continue;
                };
                if let Some(t) = store.get_msg::<Timer>(TIMERS, id)?
                    && t.name.starts_with(&req.name_prefix)
                {
                    timers.push(t);
                }
            }
            if !full {
                return Ok(ListSchedulesResponse {
                    timers,
                    next_page_token: String::new(),
                });
            }
        }
    }
}
