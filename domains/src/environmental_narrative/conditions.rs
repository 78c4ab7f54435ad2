//! A location's fragments against their conditions: what one Discover reads from the
//! world (each fact, region's weather and the game clock once, and the player's earlier
//! discoveries) and whether a fragment may be found given it.

use std::collections::{BTreeSet, HashMap, HashSet};

use aicore_proto::aicore::environmental_narrative::v1::{Conditions, Fragment};
use aicore_proto::aicore::world_state::v1::Fact;
use aicore_proto::{CallOptions, Status};

use super::records::pair;
use super::{EnvironmentalNarrative, FOUND, GameNow};

/// Whether game hour `hour` is in `[from, to)`, wrapping past midnight; equal bounds mean
/// any hour.
pub fn hour_in(hour: i32, from: i32, to: i32) -> bool {
    if from == to {
        true
    } else if from < to {
        (from..to).contains(&hour)
    } else {
        hour >= from || hour < to
    }
}

fn has_time_condition(c: &Conditions) -> bool {
    c.from_hour != c.to_hour || c.min_game_day > 0
}

/// What one Discover read from the world, each thing once.
#[derive(Default)]
pub(super) struct Readings {
    pub(super) now: Option<GameNow>,
    weather: HashMap<String, i32>,
    facts: HashMap<String, Option<Fact>>,
    found: HashSet<String>,
}

impl EnvironmentalNarrative {
    /// Reads what the fragments' conditions need, each thing once.
    pub(super) async fn read(
        &self,
        player: &str,
        fragments: &[Fragment],
        options: &CallOptions,
    ) -> Result<Readings, Status> {
        let mut r = Readings::default();
        let conds = || {
            fragments
                .iter()
                .filter_map(|f| f.conditions.as_ref().map(|c| (f, c)))
        };
        if conds().any(|(_, c)| has_time_condition(c)) {
            r.now = Some(self.world.now(options.clone()).await?);
        }
        let regions: BTreeSet<&str> = conds()
            .filter(|(_, c)| !c.weather.is_empty())
            .map(|(f, _)| f.region_id.as_str())
            .collect();
        for region in regions {
            let w = self
                .world
                .weather(region.to_string(), options.clone())
                .await?;
            r.weather.insert(region.to_string(), w);
        }
        let keys: BTreeSet<&str> = conds()
            .flat_map(|(_, c)| c.facts.iter().map(|f| f.key.as_str()))
            .collect();
        for key in keys {
            let fact = self.world.fact(key.to_string(), options.clone()).await?;
            r.facts.insert(key.to_string(), fact);
        }
        for (_, c) in conds() {
            for id in &c.requires_fragment_ids {
                if self.ctx.store.get(FOUND, &pair(player, id))?.is_some() {
                    r.found.insert(id.clone());
                }
            }
        }
        Ok(r)
    }
}

/// Whether a fragment may be found given what was read.
pub(super) fn available(f: &Fragment, r: &Readings) -> bool {
    let Some(c) = &f.conditions else {
        return true;
    };
    if has_time_condition(c) {
        let Some(now) = r.now else { return false };
        if !hour_in(now.hour, c.from_hour, c.to_hour) || now.day < c.min_game_day {
            return false;
        }
    }
    if !c.weather.is_empty() {
        let w = r.weather.get(&f.region_id).copied().unwrap_or(0);
        if !c.weather.contains(&w) {
            return false;
        }
    }
    c.facts.iter().all(|fc| {
        let fact = r.facts.get(&fc.key).and_then(Option::as_ref);
        aicore_runtime::facts::holds(fc.op, fc.value.as_ref(), fact)
    }) && c
        .requires_fragment_ids
        .iter()
        .all(|id| r.found.contains(id))
}
