//! environmental-narrative: lore fragments bound to locations, found by players when their
//! conditions hold — world-state facts, the game hour and day (time-manager) and the
//! region's weather (weather-manager), all read over NATS through the small [`World`]
//! trait, so unit tests substitute them — and earlier discoveries (chains of clues).
//!
//! Discover evaluates a location's fragments, then records the first discovery of each in
//! one store transaction that first looks for an existing record: transactions are
//! serialised, so of two racing calls (or a retry) exactly one records a fragment and
//! emits `evt.narrative.discovered`; the other answers `first_time` false.
//!
//! Tables (fragment ids are `[a-z0-9_.-]`, location and player ids have no control
//! characters, so `\0` separates key parts):
//! - `environmental_narrative.fragments`: fragment_id → [`Fragment`].
//! - `environmental_narrative.at`: location_id `\0` fragment_id → empty (by location).
//! - `environmental_narrative.found`: player_id `\0` fragment_id → [`Found`].
//! - `environmental_narrative.recent`: player_id `\0` !discovered_ms `\0` fragment_id →
//!   location_id, so ListDiscovered lists most recent first with one scan.
//! - `environmental_narrative.idempotency`: replies of DeleteFragment for their keys.
//!
//! DeleteFragment removes the fragment and its location row, and keeps the players'
//! discoveries (`found`, `recent`): they stop being listed while the fragment is gone and
//! still satisfy `requires_fragment_ids` of other fragments.
//!
//! This file holds the domain type and its handlers; beside it are `config` (the bounds),
//! `check` (input checks), `world` (the other domains), `conditions` (what Discover reads
//! and whether a fragment's conditions hold) and `records` (stored discoveries, their
//! keys and their recording).

mod check;
mod conditions;
mod config;
mod records;
mod world;

pub use conditions::hour_in;
pub use config::EnvironmentalNarrativeConfig;
pub use records::Found;
pub use world::{GameNow, OverNats, World};

use std::sync::Arc;

use aicore_proto::aicore::environmental_narrative::v1::{
    DefineFragmentRequest, DefineFragmentResponse, DeleteFragmentRequest, DeleteFragmentResponse,
    DiscoverRequest, DiscoverResponse, Discovery, EnvironmentalNarrativeHandler, Fragment,
    ListDiscoveredRequest, ListDiscoveredResponse,
};
use aicore_proto::{CallOptions, Code, Metadata, Request, Status};

use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::{Ctx, paging, validate};

use check::check_location;
use conditions::available;
use records::{pair, prefix};

const FRAGMENTS: &str = "environmental_narrative.fragments";
const AT: &str = "environmental_narrative.at";
const FOUND: &str = "environmental_narrative.found";
const RECENT: &str = "environmental_narrative.recent";
const LIST_TOKEN: u8 = b'D';
/// Replies of DeleteFragment kept for replays of their idempotency keys.
const IDEMPOTENCY: Idempotency = Idempotency::new("environmental_narrative.idempotency");

/// The subject a first discovery is published on (payload:
/// [`FragmentDiscovered`](aicore_proto::aicore::environmental_narrative::v1::FragmentDiscovered)).
pub const DISCOVERED_SUBJECT: &str = "evt.narrative.discovered";

/// The environmental-narrative domain.
pub struct EnvironmentalNarrative {
    ctx: Ctx,
    config: EnvironmentalNarrativeConfig,
    world: Arc<dyn World>,
}

impl aicore_runtime::Domain for EnvironmentalNarrative {
    type Config = EnvironmentalNarrativeConfig;

    fn build(
        ctx: &Ctx,
        config: &EnvironmentalNarrativeConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let world = Arc::new(OverNats { ctx: ctx.clone() });
        Ok(Arc::new(
            aicore_proto::aicore::environmental_narrative::v1::EnvironmentalNarrativeServer(
                Arc::new(EnvironmentalNarrative::new(
                    ctx.clone(),
                    config.clone(),
                    world,
                )),
            ),
        ))
    }
}

impl EnvironmentalNarrative {
    /// The domain on a context, reading the world through `world`.
    pub fn new(ctx: Ctx, config: EnvironmentalNarrativeConfig, world: Arc<dyn World>) -> Self {
        EnvironmentalNarrative { ctx, config, world }
    }
}

/// Calls on the domain's own authority (a player may not read world facts directly).
fn own_authority(meta: &Metadata) -> CallOptions {
    CallOptions {
        caller: None,
        ..CallOptions::from_meta(meta)
    }
}

impl EnvironmentalNarrativeHandler for EnvironmentalNarrative {
    async fn define_fragment(
        &self,
        request: Request<DefineFragmentRequest>,
    ) -> Result<DefineFragmentResponse, Status> {
        let req = request.body;
        let mut f = req
            .fragment
            .ok_or_else(|| Status::invalid("fragment", "is required"))?;
        self.check_fragment(&f)?;
        let now = self.ctx.now_ts();
        let expected = req.expected_version;
        let max = self.config.max_fragments_per_location;
        self.ctx
            .store
            .write(move |tx| {
                let live = tx.get_msg::<Fragment>(FRAGMENTS, f.fragment_id.as_bytes())?;
                let version = live.as_ref().map_or(0, |l| l.version);
                let what = format!("fragment `{}`", f.fragment_id);
                validate::expected_version(expected, version, &what)?;
                let moved = live.as_ref().is_none_or(|l| l.location_id != f.location_id);
                if moved {
                    let here = prefix(&f.location_id);
                    if tx.scan(AT, &here, &here, max)?.len() >= max {
                        return Err(Status::with_field(
                            Code::ResourceExhausted,
                            "fragment.location_id",
                            format!("the location already has {max} fragments"),
                        ));
                    }
                    if let Some(l) = &live {
                        tx.delete(AT, &pair(&l.location_id, &l.fragment_id));
                    }
                    tx.put(AT, &pair(&f.location_id, &f.fragment_id), Vec::new());
                }
                f.version = live.map_or(0, |l| l.version) + 1;
                f.updated_at = Some(now);
                tx.put_msg(FRAGMENTS, f.fragment_id.as_bytes(), &f);
                Ok(DefineFragmentResponse { fragment: Some(f) })
            })
            .await
    }

    async fn delete_fragment(
        &self,
        request: Request<DeleteFragmentRequest>,
    ) -> Result<DeleteFragmentResponse, Status> {
        let req = request.body;
        validate::slug(&req.fragment_id, "fragment_id", 64)?;
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "delete_fragment", &req.fragment_id, &req)?;
        let (id, expected) = (req.fragment_id, req.expected_version);
        keyed
            .write(move |tx| {
                let live = tx
                    .get_msg::<Fragment>(FRAGMENTS, id.as_bytes())?
                    .ok_or_else(|| {
                        Status::with_field(
                            Code::NotFound,
                            "fragment_id",
                            format!("no fragment `{id}`"),
                        )
                    })?;
                let what = format!("fragment `{id}`");
                validate::expected_version(expected, live.version, &what)?;
                tx.delete(AT, &pair(&live.location_id, &id));
                tx.delete(FRAGMENTS, id.as_bytes());
                Ok(DeleteFragmentResponse {
                    deleted_version: live.version,
                })
            })
            .await
    }

    async fn discover(
        &self,
        request: Request<DiscoverRequest>,
    ) -> Result<DiscoverResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        check_location(&req.location_id, "location_id")?;
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let here = prefix(&req.location_id);
        let rows = self
            .ctx
            .store
            .scan(AT, &here, &here, self.config.max_fragments_per_location)?;
        let mut fragments = Vec::with_capacity(rows.len());
        for (k, _) in rows {
            let id = &k[here.len()..];
            if let Some(f) = self.ctx.store.get_msg_cached::<Fragment>(FRAGMENTS, id)? {
                fragments.push(f);
            }
        }
        let readings = self
            .read(&req.player_id, &fragments, &own_authority(&meta))
            .await?;
        let mut eligible: Vec<Fragment> = fragments
            .into_iter()
            .filter(|f| available(f, &readings))
            .collect();
        eligible.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.fragment_id.cmp(&b.fragment_id))
        });
        let (game_day, game_hour) = readings.now.map_or((0, 0), |n| (n.day, n.hour));
        if eligible.is_empty() {
            return Ok(DiscoverResponse {
                discoveries: Vec::new(),
                game_day,
                game_hour,
            });
        }
        let now = self.ctx.now_ts();
        let (player, location) = (req.player_id, req.location_id);
        let discoveries = self
            .ctx
            .store
            .write(move |tx| records::record_discoveries(tx, eligible, &player, &location, now))
            .await?;
        Ok(DiscoverResponse {
            discoveries,
            game_day,
            game_hour,
        })
    }

    async fn list_discovered(
        &self,
        request: Request<ListDiscoveredRequest>,
    ) -> Result<ListDiscoveredResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        if !req.location_id.is_empty() {
            check_location(&req.location_id, "location_id")?;
        }
        meta.authorize_owner(&req.player_id, &["service", "admin"])?;
        let limit = paging::page_size(
            req.page_size,
            self.config.default_page_size,
            self.config.max_page_size,
        )?;
        let mine = prefix(&req.player_id);
        let mut page = paging::Page::start(
            paging::Listing {
                store: &self.ctx.store,
                table: RECENT,
                prefix: &mine,
                kind: LIST_TOKEN,
                limit,
                max_scan: limit.saturating_mul(20),
            },
            &req.page_token,
        )?;
        while let Some((k, v)) = page.next_row()? {
            if !req.location_id.is_empty() && v.as_ref() != req.location_id.as_bytes() {
                continue;
            }
            // player \0 !ms(8) \0 fragment_id
            let Some(id) = k.get(mine.len() + 9..) else {
                continue;
            };
            let Some(fragment) = self.ctx.store.get_msg_cached::<Fragment>(FRAGMENTS, id)? else {
                continue;
            };
            let found = self
                .ctx
                .store
                .get_msg::<Found>(FOUND, &pair(&req.player_id, &fragment.fragment_id))?;
            page.keep(Discovery {
                fragment: Some(fragment),
                discovered_at: found.and_then(|f| f.discovered_at),
                first_time: false,
            });
        }
        let (discoveries, next_page_token) = page.finish();
        Ok(ListDiscoveredResponse {
            discoveries,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests;
