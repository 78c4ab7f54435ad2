//! A region definition's validation: conditions, climate tables and temperatures, each
//! error naming its field.

use super::*;

pub(super) fn condition_ok(c: i32) -> bool {
    WeatherCondition::try_from(c).is_ok_and(|c| c != WeatherCondition::Unspecified)
}

/// Checks a region definition; every refusal names the field.
pub fn validate_region(r: &Region) -> Result<(), Status> {
    validate::slug(&r.region_id, "region.region_id", MAX_REGION_ID)?;
    if r.name.chars().count() > 128 || r.name.chars().any(char::is_control) {
        return Err(Status::invalid(
            "region.name",
            "must be at most 128 characters without control characters",
        ));
    }
    if !condition_ok(r.initial_condition) {
        return Err(Status::invalid(
            "region.initial_condition",
            "must be a weather condition other than UNSPECIFIED",
        ));
    }
    if r.step_seconds != 0 && !(60..=30 * 86_400).contains(&r.step_seconds) {
        return Err(Status::invalid(
            "region.step_seconds",
            "must be 0 (one game hour) or 60 to 2592000 game seconds",
        ));
    }
    if r.climates.len() != 4 {
        return Err(Status::invalid(
            "region.climates",
            "must hold exactly one climate per season (four)",
        ));
    }
    let mut seasons = BTreeSet::new();
    let mut used = BTreeSet::from([r.initial_condition]);
    for (i, c) in r.climates.iter().enumerate() {
        let field = format!("region.climates[{i}]");
        if !Season::try_from(c.season).is_ok_and(|s| s != Season::Unspecified)
            || !seasons.insert(c.season)
        {
            return Err(Status::invalid(
                &format!("{field}.season"),
                "must be a season other than UNSPECIFIED, each season once",
            ));
        }
        check_climate(c, &field)?;
        for t in &c.transitions {
            used.insert(t.from_condition);
            used.insert(t.to_condition);
        }
    }
    // Every condition the chain can be in must be able to leave in every season, or the
    // chain would have nowhere to go after a season change.
    for (i, c) in r.climates.iter().enumerate() {
        let from: BTreeSet<i32> = c.transitions.iter().map(|t| t.from_condition).collect();
        if let Some(missing) = used.iter().find(|u| !from.contains(u)) {
            let name = WeatherCondition::try_from(*missing)
                .map(|c| c.as_str_name())
                .unwrap_or("?");
            return Err(Status::invalid(
                &format!("region.climates[{i}].transitions"),
                format!(
                    "{name} is used by the region but has no outgoing transition in this season"
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_climate(c: &Climate, field: &str) -> Result<(), Status> {
    if !c.mean_temperature_c.is_finite() || c.mean_temperature_c.abs() > MAX_TEMPERATURE_C {
        return Err(Status::invalid(
            &format!("{field}.mean_temperature_c"),
            format!("must be between -{MAX_TEMPERATURE_C} and {MAX_TEMPERATURE_C}"),
        ));
    }
    if !c.temperature_spread_c.is_finite()
        || !(0.0..=MAX_TEMPERATURE_C).contains(&c.temperature_spread_c)
    {
        return Err(Status::invalid(
            &format!("{field}.temperature_spread_c"),
            format!("must be 0 to {MAX_TEMPERATURE_C}"),
        ));
    }
    if c.transitions.is_empty() {
        return Err(Status::invalid(
            &format!("{field}.transitions"),
            "must not be empty",
        ));
    }
    let mut edges = BTreeSet::new();
    for (j, t) in c.transitions.iter().enumerate() {
        let tf = format!("{field}.transitions[{j}]");
        if !condition_ok(t.from_condition) {
            return Err(Status::invalid(
                &format!("{tf}.from_condition"),
                "must be a weather condition other than UNSPECIFIED",
            ));
        }
        if !condition_ok(t.to_condition) {
            return Err(Status::invalid(
                &format!("{tf}.to_condition"),
                "must be a weather condition other than UNSPECIFIED",
            ));
        }
        if !(t.weight.is_finite() && t.weight > 0.0) {
            return Err(Status::invalid(
                &format!("{tf}.weight"),
                "must be a finite number > 0",
            ));
        }
        if !edges.insert((t.from_condition, t.to_condition)) {
            return Err(Status::invalid(
                &tf,
                "repeats a from/to pair already given in this climate",
            ));
        }
    }
    Ok(())
}
