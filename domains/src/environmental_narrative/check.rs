//! The checks of environmental-narrative's input, each refusal naming the field: a
//! location id, and a fragment as DefineFragment receives it (ids, title, text,
//! documents, and its conditions within the configured bounds). Nothing here reads or
//! writes the store.

use aicore_proto::Status;
use aicore_proto::aicore::environmental_narrative::v1::{Conditions, Fragment, WeatherCondition};
use aicore_runtime::validate;

use super::{EnvironmentalNarrative, EnvironmentalNarrativeConfig};

const MAX_LOCATION_CHARS: usize = 128;

pub(super) fn check_location(id: &str, field: &str) -> Result<(), Status> {
    let n = id.chars().count();
    if n == 0 || n > MAX_LOCATION_CHARS || id.chars().any(char::is_control) {
        return Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_LOCATION_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

impl EnvironmentalNarrative {
    /// Checks a fragment as DefineFragment receives it.
    pub(super) fn check_fragment(&self, f: &Fragment) -> Result<(), Status> {
        let c = &self.config;
        validate::slug(&f.fragment_id, "fragment.fragment_id", 64)?;
        check_location(&f.location_id, "fragment.location_id")?;
        if !f.region_id.is_empty() {
            validate::slug(&f.region_id, "fragment.region_id", 64)?;
        }
        if f.title.chars().count() > c.max_title_chars {
            return Err(Status::invalid(
                "fragment.title",
                format!("must be at most {} characters", c.max_title_chars),
            ));
        }
        let n = f.text.chars().count();
        if n == 0 || n > c.max_text_chars {
            return Err(Status::invalid(
                "fragment.text",
                format!("must be 1 to {} characters", c.max_text_chars),
            ));
        }
        if f.document_ids.len() > c.max_conditions {
            return Err(Status::invalid(
                "fragment.document_ids",
                format!("must hold at most {} ids", c.max_conditions),
            ));
        }
        for (i, d) in f.document_ids.iter().enumerate() {
            validate::slug(d, &format!("fragment.document_ids[{i}]"), 128)?;
        }
        let Some(cond) = &f.conditions else {
            return Ok(());
        };
        check_conditions(cond, f, c)
    }
}

/// Checks the conditions `cond` of fragment `f`.
fn check_conditions(
    cond: &Conditions,
    f: &Fragment,
    c: &EnvironmentalNarrativeConfig,
) -> Result<(), Status> {
    for (name, len) in [
        ("facts", cond.facts.len()),
        ("weather", cond.weather.len()),
        ("requires_fragment_ids", cond.requires_fragment_ids.len()),
    ] {
        if len > c.max_conditions {
            return Err(Status::invalid(
                &format!("fragment.conditions.{name}"),
                format!("must hold at most {}", c.max_conditions),
            ));
        }
    }
    for (i, fc) in cond.facts.iter().enumerate() {
        aicore_runtime::facts::check_condition(
            &format!("fragment.conditions.facts[{i}]"),
            &fc.key,
            fc.op,
            fc.value.as_ref(),
        )?;
    }
    for (name, h) in [("from_hour", cond.from_hour), ("to_hour", cond.to_hour)] {
        if !(0..24).contains(&h) {
            return Err(Status::invalid(
                &format!("fragment.conditions.{name}"),
                "must be a game hour, 0 to 23",
            ));
        }
    }
    for (i, w) in cond.weather.iter().enumerate() {
        if matches!(
            WeatherCondition::try_from(*w),
            Err(_) | Ok(WeatherCondition::Unspecified)
        ) {
            return Err(Status::invalid(
                &format!("fragment.conditions.weather[{i}]"),
                "must be a known weather condition",
            ));
        }
    }
    if !cond.weather.is_empty() && f.region_id.is_empty() {
        return Err(Status::invalid(
            "fragment.region_id",
            "is required with weather conditions",
        ));
    }
    for (i, r) in cond.requires_fragment_ids.iter().enumerate() {
        let field = format!("fragment.conditions.requires_fragment_ids[{i}]");
        validate::slug(r, &field, 64)?;
        if *r == f.fragment_id {
            return Err(Status::invalid(&field, "a fragment cannot require itself"));
        }
    }
    if cond.min_game_day < 0 {
        return Err(Status::invalid(
            "fragment.conditions.min_game_day",
            "must be 0 or more",
        ));
    }
    Ok(())
}
