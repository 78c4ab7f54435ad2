//! The checks of npc-behavior's input, each refusal naming the field: a definition as
//! Define receives it (ids, traits, needs, schedule, actions and their considerations,
//! within the configured bounds) and an interaction's figures. Nothing here reads or
//! writes the store.

use std::collections::HashSet;

use aicore_proto::Status;
use aicore_proto::aicore::npc_behavior::v1::{
    Action, Consideration, Curve, InteractRequest, NpcDefinition,
};

use super::NpcBehaviorConfig;

/// `v` is finite and between `lo` and 1, else InvalidArgument naming `field`.
pub(super) fn unit(v: f64, field: &str, lo: f64) -> Result<(), Status> {
    if v.is_finite() && (lo..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(Status::invalid(
            field,
            format!("must be between {lo} and 1"),
        ))
    }
}

/// `v` is an id of 1 to 64 characters of `[a-z0-9_.-]`, else InvalidArgument naming `field`.
pub(super) fn name(v: &str, field: &str) -> Result<(), Status> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid(
            field,
            "must be 1 to 64 characters of [a-z0-9_.-]",
        ))
    }
}

/// Checks an NPC definition as Define receives it, against the bounds of `c`.
pub(super) fn check_definition(n: &NpcDefinition, c: &NpcBehaviorConfig) -> Result<(), Status> {
    name(&n.npc_id, "npc.npc_id")?;
    if n.name.is_empty() || n.name.chars().count() > 100 {
        return Err(Status::invalid("npc.name", "must be 1 to 100 characters"));
    }
    for (what, len) in [
        ("traits", n.traits.len()),
        ("needs", n.needs.len()),
        ("schedule", n.schedule.len()),
    ] {
        if len > c.max_entries {
            return Err(Status::invalid(
                &format!("npc.{what}"),
                format!("must hold at most {}", c.max_entries),
            ));
        }
    }
    for (k, v) in &n.traits {
        name(k, &format!("npc.traits.{k}"))?;
        unit(*v, &format!("npc.traits.{k}"), 0.0)?;
    }
    let needs = check_needs(n)?;
    check_schedule(n)?;
    if n.actions.is_empty() || n.actions.len() > c.max_actions {
        return Err(Status::invalid(
            "npc.actions",
            format!("must hold 1 to {} actions", c.max_actions),
        ));
    }
    let mut ids = HashSet::new();
    for (i, a) in n.actions.iter().enumerate() {
        let f = format!("npc.actions[{i}]");
        name(&a.action_id, &format!("{f}.action_id"))?;
        if !ids.insert(a.action_id.as_str()) {
            return Err(Status::invalid(&format!("{f}.action_id"), "appears twice"));
        }
        check_action(a, &f, n, &needs, c)?;
    }
    Ok(())
}

/// Checks the needs of `n`; answers their ids.
fn check_needs(n: &NpcDefinition) -> Result<HashSet<&str>, Status> {
    let mut needs = HashSet::new();
    for (i, need) in n.needs.iter().enumerate() {
        let f = format!("npc.needs[{i}]");
        name(&need.need_id, &format!("{f}.need_id"))?;
        if !needs.insert(need.need_id.as_str()) {
            return Err(Status::invalid(&format!("{f}.need_id"), "appears twice"));
        }
        unit(need.value, &format!("{f}.value"), 0.0)?;
        if !(need.decay_per_game_hour.is_finite()
            && (0.0..=1.0).contains(&need.decay_per_game_hour))
        {
            return Err(Status::invalid(
                &format!("{f}.decay_per_game_hour"),
                "must be between 0 and 1",
            ));
        }
    }
    Ok(needs)
}

/// Checks the schedule of `n`: game hours and activity names.
fn check_schedule(n: &NpcDefinition) -> Result<(), Status> {
    for (i, e) in n.schedule.iter().enumerate() {
        let f = format!("npc.schedule[{i}]");
        for (h, v) in [("from_hour", e.from_hour), ("to_hour", e.to_hour)] {
            if !(0..24).contains(&v) {
                return Err(Status::invalid(
                    &format!("{f}.{h}"),
                    "must be a game hour, 0 to 23",
                ));
            }
        }
        name(&e.activity, &format!("{f}.activity"))?;
    }
    Ok(())
}

/// Checks action `a` (field `f`) of `n` beyond its id: its base score, its
/// considerations and the needs it satisfies (`needs`: those of `n`).
fn check_action(
    a: &Action,
    f: &str,
    n: &NpcDefinition,
    needs: &HashSet<&str>,
    c: &NpcBehaviorConfig,
) -> Result<(), Status> {
    unit(a.base_score, &format!("{f}.base_score"), 0.0)?;
    if a.considerations.len() > c.max_considerations {
        return Err(Status::invalid(
            &format!("{f}.considerations"),
            format!("must hold at most {}", c.max_considerations),
        ));
    }
    for (j, k) in a.considerations.iter().enumerate() {
        check_consideration(k, &format!("{f}.considerations[{j}]"), n, needs)?;
    }
    for (need, v) in &a.satisfies {
        if !needs.contains(need.as_str()) {
            return Err(Status::invalid(
                &format!("{f}.satisfies.{need}"),
                "must be a need of this NPC",
            ));
        }
        unit(*v, &format!("{f}.satisfies.{need}"), 0.0)?;
    }
    Ok(())
}

/// Checks consideration `k` (field `cf`) of an action of `n`: an input it can read, a
/// known curve, its weight.
fn check_consideration(
    k: &Consideration,
    cf: &str,
    n: &NpcDefinition,
    needs: &HashSet<&str>,
) -> Result<(), Status> {
    let (kind, arg) = k.input.split_once(':').unwrap_or((k.input.as_str(), ""));
    let ok = match kind {
        "need" => needs.contains(arg),
        "trait" => n.traits.contains_key(arg),
        "relation" => arg == "affinity" || arg == "trust",
        "schedule" | "context" => name(arg, "").is_ok(),
        _ => false,
    };
    if !ok {
        return Err(Status::invalid(
            &format!("{cf}.input"),
            "must be need:<a need of this NPC>, trait:<a trait of this NPC>, \
             relation:affinity, relation:trust, schedule:<activity> or context:<key>",
        ));
    }
    if matches!(Curve::try_from(k.curve), Err(_) | Ok(Curve::Unspecified)) {
        return Err(Status::invalid(
            &format!("{cf}.curve"),
            "must be a known curve",
        ));
    }
    if !(k.weight.is_finite() && (0.0..=10.0).contains(&k.weight)) {
        return Err(Status::invalid(
            &format!("{cf}.weight"),
            "must be between 0 and 10",
        ));
    }
    if !k.weight_trait.is_empty() && !n.traits.contains_key(&k.weight_trait) {
        return Err(Status::invalid(
            &format!("{cf}.weight_trait"),
            "must be a trait of this NPC",
        ));
    }
    Ok(())
}

/// Checks the figures of an interaction (the NPC and the player are checked apart).
pub(super) fn check_interaction(req: &InteractRequest) -> Result<(), Status> {
    let n = req.summary.chars().count();
    if n == 0 || n > 256 {
        return Err(Status::invalid("summary", "must be 1 to 256 characters"));
    }
    if !(req.sentiment.is_finite() && (-1.0..=1.0).contains(&req.sentiment)) {
        return Err(Status::invalid("sentiment", "must be between -1 and 1"));
    }
    if !(req.trust_delta.is_finite() && (-1.0..=1.0).contains(&req.trust_delta)) {
        return Err(Status::invalid("trust_delta", "must be between -1 and 1"));
    }
    unit(req.importance, "importance", 0.0)?;
    if req.player_said.chars().count() > 1000 {
        return Err(Status::invalid(
            "player_said",
            "must be at most 1000 characters",
        ));
    }
    if req.idempotency_key.is_empty() {
        return Err(Status::invalid("idempotency_key", "is required"));
    }
    Ok(())
}
