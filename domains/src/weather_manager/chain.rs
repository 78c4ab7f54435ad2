//! The weather chain: a seeded, counter-based Markov chain per region whose transition
//! tables follow the season, so the weather of any step can be computed without walking from
//! the start, and an override laid over it.

use super::*;

/// splitmix64's finaliser over (seed, step, salt): a counter-based generator.
pub(super) fn draw(seed: u64, step: i64, salt: u64) -> u64 {
    let mut z = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw as a number in [0, 1).
pub(super) fn unit(seed: u64, step: i64, salt: u64) -> f64 {
    (draw(seed, step, salt) >> 11) as f64 / (1u64 << 53) as f64
}

/// One season's table: for each condition, its successors with cumulative probabilities.
#[derive(Debug, Clone, Default)]
pub(super) struct Table {
    pub(super) rows: BTreeMap<i32, Vec<(i32, f64)>>,
    pub(super) mean: f64,
    pub(super) spread: f64,
}

/// A region's chain, compiled from its (validated) definition.
#[derive(Debug, Clone)]
pub struct Chain {
    seed: u64,
    step_seconds: i64,
    initial: i32,
    days_per_season: u32,
    /// Spring, summer, autumn, winter.
    seasons: [Table; 4],
}

impl Chain {
    /// Compiles a validated region.
    pub fn new(region: &Region, days_per_season: u32) -> Chain {
        let mut seasons: [Table; 4] = Default::default();
        for c in &region.climates {
            let Some(t) = usize::try_from(c.season - 1)
                .ok()
                .and_then(|i| seasons.get_mut(i))
            else {
                continue;
            };
            let mut weights: BTreeMap<i32, Vec<(i32, f64)>> = BTreeMap::new();
            for tr in &c.transitions {
                weights
                    .entry(tr.from_condition)
                    .or_default()
                    .push((tr.to_condition, tr.weight));
            }
            for (from, edges) in weights {
                let total: f64 = edges.iter().map(|e| e.1).sum();
                let mut acc = 0.0;
                let row = edges
                    .into_iter()
                    .map(|(to, w)| {
                        acc += w / total;
                        (to, acc)
                    })
                    .collect();
                t.rows.insert(from, row);
            }
            t.mean = c.mean_temperature_c;
            t.spread = c.temperature_spread_c;
        }
        Chain {
            seed: region.seed,
            step_seconds: step_seconds(region),
            initial: region.initial_condition,
            days_per_season,
            seasons,
        }
    }

    /// Game seconds per step.
    pub fn step_seconds(&self) -> i64 {
        self.step_seconds
    }

    /// The step game second `t` falls in.
    pub fn step_of(&self, t: i64) -> i64 {
        t.div_euclid(self.step_seconds)
    }

    pub(super) fn table(&self, step: i64) -> &Table {
        let season = aicore_runtime::calendar::season_at(
            step.saturating_mul(self.step_seconds),
            self.days_per_season,
        );
        &self.seasons[(season - 1).clamp(0, 3) as usize]
    }

    /// The condition after `from` at step `step`.
    pub(super) fn next(&self, from: i32, step: i64) -> i32 {
        if step.rem_euclid(EPOCH_STEPS) == 0 {
            return self.initial;
        }
        let Some(row) = self.table(step).rows.get(&from) else {
            // Validation makes every reachable condition have a row; stay put otherwise.
            return from;
        };
        let u = unit(self.seed, step, SALT_TRANSITION);
        row.iter()
            .find(|(_, cum)| u < *cum)
            .or(row.last())
            .map_or(from, |(to, _)| *to)
    }

    /// The chain's condition at `step`, walking from `cursor` (a known `(step, condition)`)
    /// when it is earlier in the same epoch, else from the epoch's start.
    pub fn condition_at(&self, step: i64, cursor: Option<(i64, i32)>) -> i32 {
        self.walk(step, 1, cursor)[0]
    }

    /// The chain's conditions at steps `first .. first + n`.
    pub fn walk(&self, first: i64, n: usize, cursor: Option<(i64, i32)>) -> Vec<i32> {
        let epoch_start = first - first.rem_euclid(EPOCH_STEPS);
        let (mut k, mut c) = match cursor {
            Some((ck, cc)) if ck <= first && ck >= epoch_start => (ck, cc),
            _ => (epoch_start, self.initial),
        };
        while k < first {
            k += 1;
            c = self.next(c, k);
        }
        let mut out = Vec::with_capacity(n.max(1));
        out.push(c);
        for _ in 1..n {
            k += 1;
            c = self.next(c, k);
            out.push(c);
        }
        out
    }

    /// The chain's weather over `step` with condition `condition`.
    pub(super) fn weather(&self, region_id: &str, step: i64, condition: i32) -> Weather {
        let t = self.table(step);
        let temp = t.mean + t.spread * (2.0 * unit(self.seed, step, SALT_TEMPERATURE) - 1.0);
        Weather {
            region_id: region_id.to_string(),
            condition,
            temperature_c: (temp * 10.0).round() / 10.0,
            intensity: 0.2 + 0.8 * unit(self.seed, step, SALT_INTENSITY),
            from_game_seconds: step.saturating_mul(self.step_seconds),
            until_game_seconds: (step + 1).saturating_mul(self.step_seconds),
            overridden: false,
        }
    }
}

pub(super) fn step_seconds(region: &Region) -> i64 {
    if region.step_seconds == 0 {
        DEFAULT_STEP_SECONDS
    } else {
        region.step_seconds
    }
}

/// The weather at game second `t` (in `step`) given the chain's condition there and an
/// override, if any.
pub(super) fn effective(
    chain: &Chain,
    region_id: &str,
    step: i64,
    chain_condition: i32,
    ov: Option<&OverrideState>,
    t: i64,
) -> Weather {
    let mut w = chain.weather(region_id, step, chain_condition);
    if let Some(o) = ov.filter(|o| o.active_at(t)) {
        w.condition = o.condition;
        if let Some(temp) = o.temperature_c {
            w.temperature_c = temp;
        }
        w.intensity = o.intensity;
        w.overridden = true;
    }
    w
}
