//! DefineQuest's validation: a quest definition checked field by field, each error naming
//! its field.

use super::*;

impl QuestSystem {
    pub(super) fn validate(&self, q: &Quest) -> Result<(), Status> {
        let c = self.config();
        validate::slug(&q.quest_id, "quest.quest_id", MAX_QUEST_ID_CHARS)?;
        if q.title.chars().count() > c.max_title_chars {
            return Err(Status::invalid(
                "quest.title",
                format!("must be at most {} characters", c.max_title_chars),
            ));
        }
        if q.description.chars().count() > c.max_description_chars {
            return Err(Status::invalid(
                "quest.description",
                format!("must be at most {} characters", c.max_description_chars),
            ));
        }
        if q.objectives.is_empty() || q.objectives.len() > c.max_objectives {
            return Err(Status::invalid(
                "quest.objectives",
                format!("must hold 1 to {} objectives", c.max_objectives),
            ));
        }
        check_objectives(q, c)?;
        check_rewards(q, c)?;
        check_prerequisites(q, c)
    }
}

/// Objectives: 1 to `max_objectives`, unique ids, targets of at least 1.
fn check_objectives(q: &Quest, c: &QuestSystemConfig) -> Result<(), Status> {
    let mut ids = HashSet::new();
    for (i, o) in q.objectives.iter().enumerate() {
        let field = format!("quest.objectives[{i}]");
        validate::slug(
            &o.objective_id,
            &format!("{field}.objective_id"),
            MAX_QUEST_ID_CHARS,
        )?;
        if !ids.insert(o.objective_id.as_str()) {
            return Err(Status::invalid(
                &format!("{field}.objective_id"),
                "is not unique within the quest",
            ));
        }
        if o.target < 1 {
            return Err(Status::invalid(
                &format!("{field}.target"),
                "must be at least 1",
            ));
        }
        if o.description.chars().count() > c.max_description_chars {
            return Err(Status::invalid(
                &format!("{field}.description"),
                format!("must be at most {} characters", c.max_description_chars),
            ));
        }
    }
    Ok(())
}

/// Rewards: at most `max_rewards`, one per currency (payment's codes), positive amounts.
fn check_rewards(q: &Quest, c: &QuestSystemConfig) -> Result<(), Status> {
    if q.rewards.len() > c.max_rewards {
        return Err(Status::invalid(
            "quest.rewards",
            format!("must hold at most {} rewards", c.max_rewards),
        ));
    }
    let mut currencies = HashSet::new();
    for (i, r) in q.rewards.iter().enumerate() {
        let field = format!("quest.rewards[{i}]");
        // Payment's currency codes, checked here so a bad one fails at definition
        // rather than at every Complete.
        let cur_ok = !r.currency.is_empty()
            && r.currency.len() <= 16
            && r.currency
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !cur_ok {
            return Err(Status::invalid(
                &format!("{field}.currency"),
                "must be 1 to 16 characters of A-Z, 0-9 and _ (e.g. GOLD)",
            ));
        }
        if !currencies.insert(r.currency.as_str()) {
            return Err(Status::invalid(
                &format!("{field}.currency"),
                "appears twice; give one reward per currency",
            ));
        }
        if r.amount <= 0 {
            return Err(Status::invalid(
                &format!("{field}.amount"),
                "must be greater than 0",
            ));
        }
    }
    Ok(())
}

/// Prerequisites: at most `max_prerequisites` conditions, no quest requiring itself.
fn check_prerequisites(q: &Quest, c: &QuestSystemConfig) -> Result<(), Status> {
    let pre = q.prerequisites.clone().unwrap_or_default();
    if pre.completed_quest_ids.len() + pre.facts.len() > c.max_prerequisites {
        return Err(Status::invalid(
            "quest.prerequisites",
            format!("must hold at most {} conditions", c.max_prerequisites),
        ));
    }
    for (i, id) in pre.completed_quest_ids.iter().enumerate() {
        let field = format!("quest.prerequisites.completed_quest_ids[{i}]");
        validate::slug(id, &field, MAX_QUEST_ID_CHARS)?;
        if *id == q.quest_id {
            return Err(Status::invalid(&field, "a quest cannot require itself"));
        }
    }
    for (i, f) in pre.facts.iter().enumerate() {
        let field = format!("quest.prerequisites.facts[{i}]");
        aicore_runtime::facts::check_condition(&field, &f.key, f.op, f.value.as_ref())?;
    }
    Ok(())
}
