//! weather-manager's handlers: current weather and forecasts from the chain, overrides,
//! and region definitions.

use super::*;

impl WeatherManagerHandler for WeatherManager {
    async fn current(&self, request: Request<CurrentRequest>) -> Result<CurrentResponse, Status> {
        let region = self.region(&request.body.region_id)?;
        let game_s = self.clock.now().await?;
        let weather = self.weather_from(&region, game_s, 1)?.pop();
        Ok(CurrentResponse { weather })
    }

    async fn forecast(
        &self,
        request: Request<ForecastRequest>,
    ) -> Result<ForecastResponse, Status> {
        let req = request.body;
        let c = self.config();
        let steps = match req.steps {
            n if n < 0 => return Err(Status::invalid("steps", "must not be negative")),
            0 => c.default_forecast_steps.max(1),
            n => (n as u32).min(c.max_forecast_steps.max(1)),
        } as usize;
        let region = self.region(&req.region_id)?;
        let game_s = self.clock.now().await?;
        Ok(ForecastResponse {
            steps: self.weather_from(&region, game_s, steps)?,
        })
    }

    async fn set_override(
        &self,
        request: Request<SetOverrideRequest>,
    ) -> Result<SetOverrideResponse, Status> {
        let req = request.body;
        let mut region = self.region(&req.region_id)?;
        if !condition_ok(req.condition) {
            return Err(Status::invalid(
                "condition",
                "must be a weather condition other than UNSPECIFIED",
            ));
        }
        if let Some(t) = req.temperature_c
            && !(t.is_finite() && t.abs() <= MAX_TEMPERATURE_C)
        {
            return Err(Status::invalid(
                "temperature_c",
                format!("must be between -{MAX_TEMPERATURE_C} and {MAX_TEMPERATURE_C}"),
            ));
        }
        if !(req.intensity.is_finite() && (0.0..=1.0).contains(&req.intensity)) {
            return Err(Status::invalid("intensity", "must be 0 to 1"));
        }
        if req.duration_game_seconds < 0 {
            return Err(Status::invalid(
                "duration_game_seconds",
                "must not be negative (0 = until cleared)",
            ));
        }
        if req.reason.chars().count() > 512 {
            return Err(Status::invalid("reason", "must be at most 512 characters"));
        }
        let _observing = self.observing.lock().await;
        let game_s = self.clock.now().await?;
        let ov = OverrideState {
            condition: req.condition,
            temperature_c: req.temperature_c,
            intensity: if req.intensity == 0.0 {
                0.5
            } else {
                req.intensity
            },
            from_game_seconds: game_s,
            until_game_seconds: match req.duration_game_seconds {
                0 => 0,
                d => game_s.saturating_add(d),
            },
            reason: req.reason,
        };
        let dps = self.days_per_season();
        let max_catch_up = self.config().max_catch_up_steps;
        let weather = self
            .ctx
            .store
            .write(move |tx| {
                // The region as committed now (it may have been redefined meanwhile).
                if let Some(r) = tx.get_msg::<Region>(REGIONS, region.region_id.as_bytes())? {
                    region = r;
                } else {
                    return Err(Status::with_field(
                        Code::NotFound,
                        "region_id",
                        format!("no region `{}`", region.region_id),
                    ));
                }
                let chain = Chain::new(&region, dps);
                // Publish what changed up to now under the old override, then apply.
                observe(tx, &region, &chain, max_catch_up, game_s)?;
                tx.put_msg(OVERRIDES, region.region_id.as_bytes(), &ov);
                observe(tx, &region, &chain, max_catch_up, game_s)
            })
            .await?;
        Ok(SetOverrideResponse {
            weather: Some(weather),
        })
    }

    async fn clear_override(
        &self,
        request: Request<ClearOverrideRequest>,
    ) -> Result<ClearOverrideResponse, Status> {
        let req = request.body;
        let region = self.region(&req.region_id)?;
        let _observing = self.observing.lock().await;
        let game_s = self.clock.now().await?;
        let dps = self.days_per_season();
        let max_catch_up = self.config().max_catch_up_steps;
        let (weather, cleared) = self
            .ctx
            .store
            .write(move |tx| {
                let region = tx
                    .get_msg::<Region>(REGIONS, region.region_id.as_bytes())?
                    .ok_or_else(|| {
                        Status::with_field(Code::NotFound, "region_id", "no such region")
                    })?;
                let chain = Chain::new(&region, dps);
                observe(tx, &region, &chain, max_catch_up, game_s)?;
                let key = region.region_id.as_bytes();
                let cleared = tx
                    .get_msg::<OverrideState>(OVERRIDES, key)?
                    .is_some_and(|o| o.active_at(game_s));
                tx.delete(OVERRIDES, key);
                Ok((observe(tx, &region, &chain, max_catch_up, game_s)?, cleared))
            })
            .await?;
        Ok(ClearOverrideResponse {
            weather: Some(weather),
            cleared,
        })
    }

    async fn define_region(
        &self,
        request: Request<DefineRegionRequest>,
    ) -> Result<DefineRegionResponse, Status> {
        let req = request.body;
        let mut region = req
            .region
            .ok_or_else(|| Status::invalid("region", "is required"))?;
        validate_region(&region)?;
        // Game time is needed only to publish a change a redefinition causes; a region can
        // still be defined while time-manager is away (the background task catches up).
        let _observing = self.observing.lock().await;
        let game_s = self.clock.now().await.ok();
        let dps = self.days_per_season();
        let max_catch_up = self.config().max_catch_up_steps;
        let expected = req.expected_version;
        let now = self.ctx.now_ts();
        let region = self
            .ctx
            .store
            .write(move |tx| {
                let key = region.region_id.clone();
                let live = tx.get_msg::<Region>(REGIONS, key.as_bytes())?;
                let version = live.as_ref().map_or(0, |l| l.version);
                validate::expected_version(expected, version, &format!("region `{key}`"))?;
                if let (Some(old), Some(g)) = (&live, game_s) {
                    // Close the old chain's account before the new one takes over.
                    observe(tx, old, &Chain::new(old, dps), max_catch_up, g)?;
                }
                region.version = live.as_ref().map_or(0, |l| l.version) + 1;
                region.updated_at = Some(now);
                tx.put_msg(REGIONS, key.as_bytes(), &region);
                if let Some(g) = game_s {
                    observe(tx, &region, &Chain::new(&region, dps), max_catch_up, g)?;
                }
                Ok(region)
            })
            .await?;
        Ok(DefineRegionResponse {
            region: Some(region),
        })
    }

    async fn list_regions(
        &self,
        request: Request<ListRegionsRequest>,
    ) -> Result<ListRegionsResponse, Status> {
        let req = request.body;
        let c = self.config();
        let limit = paging::page_size(req.page_size, c.default_page_size, c.max_page_size)?;
        let from = if req.page_token.is_empty() {
            Vec::new()
        } else {
            paging::decode_token(LIST_TOKEN, &req.page_token)?
        };
        let mut rows = self.ctx.store.scan(REGIONS, b"", &from, limit + 1)?;
        let next_page_token =
            paging::next_token(&mut rows, limit, LIST_TOKEN, |(k, _)| Some(k.clone()));
        let regions = rows
            .into_iter()
            .map(|(_, v)| aicore_runtime::store::decode(REGIONS, v))
            .collect::<Result<_, Status>>()?;
        Ok(ListRegionsResponse {
            regions,
            next_page_token,
        })
    }
}
