//! The utility AI of npc-behavior, pure and free of storage: response curves, the inputs
//! a consideration reads (needs, traits, the relation to a player, the schedule, the
//! caller's context), needs decayed to a game time, and the scoring of actions with the
//! reasons a designer reads to tune them. Same state in, same ranking out: no randomness,
//! ties broken by action id.

use std::collections::HashMap;

use aicore_proto::aicore::npc_behavior::v1::{
    Action, Curve, NpcDefinition, NpcState, Relation, ScheduleEntry, ScoredAction,
};

/// Game seconds per game hour and day (time-manager's calendar).
pub const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

/// A curve applied to an input clamped to 0–1.
pub fn curve(c: Curve, x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    match c {
        Curve::Linear | Curve::Unspecified => x,
        Curve::Inverse => 1.0 - x,
        Curve::Quadratic => x * x,
        Curve::Logistic => 1.0 / (1.0 + (-10.0 * (x - 0.5)).exp()),
    }
}

fn curve_name(c: Curve) -> &'static str {
    match c {
        Curve::Linear | Curve::Unspecified => "linear",
        Curve::Inverse => "inverse",
        Curve::Quadratic => "quadratic",
        Curve::Logistic => "logistic",
    }
}

/// The game hour (0–23) of game second `t`.
pub fn hour_of(t: i64) -> i32 {
    (t.rem_euclid(DAY) / HOUR) as i32
}

/// Whether hour `h` falls in `[from, to)`, wrapping past midnight; equal bounds: all day.
fn in_hours(h: i32, from: i32, to: i32) -> bool {
    if from == to {
        true
    } else if from < to {
        (from..to).contains(&h)
    } else {
        h >= from || h < to
    }
}

/// The scheduled entry at game second `t`: the first that covers its hour.
pub fn scheduled_at(schedule: &[ScheduleEntry], t: i64) -> Option<&ScheduleEntry> {
    let h = hour_of(t);
    schedule
        .iter()
        .find(|e| in_hours(h, e.from_hour, e.to_hour))
}

/// Need levels at game second `t`: decayed from the last tick by each need's rate
/// (floored at 0). Before the first tick (`ticked_to < 0`), or for `t` at or before it,
/// the stored levels.
pub fn needs_at(def: &NpcDefinition, state: &NpcState, t: i64) -> HashMap<String, f64> {
    let hours = if state.ticked_to_game_seconds < 0 {
        0.0
    } else {
        (t - state.ticked_to_game_seconds).max(0) as f64 / HOUR as f64
    };
    def.needs
        .iter()
        .map(|n| {
            let level = state.needs.get(&n.need_id).copied().unwrap_or(n.value);
            (
                n.need_id.clone(),
                (level - n.decay_per_game_hour * hours).clamp(0.0, 1.0),
            )
        })
        .collect()
}

/// What a decision reads.
pub struct Inputs<'a> {
    /// The NPC's traits.
    pub traits: &'a HashMap<String, f64>,
    /// Need levels at the decision's game time.
    pub needs: &'a HashMap<String, f64>,
    /// The relation to the player involved (neutral when none).
    pub relation: Option<&'a Relation>,
    /// The scheduled activity now ("" for none).
    pub activity: &'a str,
    /// The caller's context values.
    pub context: &'a HashMap<String, f64>,
}

/// Affinity and trust of a relation never formed.
pub const NEUTRAL_AFFINITY: f64 = 0.0;
/// See [`NEUTRAL_AFFINITY`].
pub const NEUTRAL_TRUST: f64 = 0.5;

/// The 0–1 value of an input (`need:hunger`, `relation:affinity`, …); unknown names read
/// 0 (Define refuses them, so only context keys the caller left out do).
pub fn input_value(input: &str, i: &Inputs<'_>) -> f64 {
    let (kind, name) = input.split_once(':').unwrap_or((input, ""));
    let v = match kind {
        "need" => i.needs.get(name).copied().unwrap_or(0.0),
        "trait" => i.traits.get(name).copied().unwrap_or(0.0),
        "relation" => match name {
            "affinity" => (i.relation.map_or(NEUTRAL_AFFINITY, |r| r.affinity) + 1.0) / 2.0,
            "trust" => i.relation.map_or(NEUTRAL_TRUST, |r| r.trust),
            _ => 0.0,
        },
        "schedule" => f64::from(u8::from(i.activity == name)),
        "context" => i.context.get(name).copied().unwrap_or(0.0),
        _ => 0.0,
    };
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The score of one action with its reasons.
pub fn score(action: &Action, i: &Inputs<'_>) -> ScoredAction {
    let base = if action.base_score == 0.0 {
        1.0
    } else {
        action.base_score
    };
    let mut total = base;
    let mut reasons = vec![format!("base {base:.2}")];
    for c in &action.considerations {
        let x = input_value(&c.input, i);
        let kind = Curve::try_from(c.curve).unwrap_or(Curve::Linear);
        let f = curve(kind, x);
        let mut w = if c.weight == 0.0 { 1.0 } else { c.weight };
        let mut why = format!("{} {x:.2} → {} {f:.2}", c.input, curve_name(kind));
        if !c.weight_trait.is_empty() {
            let t = i.traits.get(&c.weight_trait).copied().unwrap_or(0.0);
            w *= t;
            why.push_str(&format!(
                ", weight {w:.2} (trait:{} {t:.2})",
                c.weight_trait
            ));
        } else if w != 1.0 {
            why.push_str(&format!(", weight {w:.2}"));
        }
        let g = if w == 0.0 { 1.0 } else { f.powf(w) };
        if w != 1.0 {
            why.push_str(&format!(" → {g:.2}"));
        }
        total *= g;
        reasons.push(why);
    }
    ScoredAction {
        action_id: action.action_id.clone(),
        score: total,
        reasons,
    }
}

/// Every action scored, best first; equal scores by action id.
pub fn rank<'a>(actions: impl Iterator<Item = &'a Action>, i: &Inputs<'_>) -> Vec<ScoredAction> {
    let mut out: Vec<ScoredAction> = actions.map(|a| score(a, i)).collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.action_id.cmp(&b.action_id))
    });
    out
}
