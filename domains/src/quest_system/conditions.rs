//! Whether a quest may start and whether its fact conditions hold: facts read as scalars
//! and compared as the contract describes, and what an existing entry allows an Accept.

use super::*;

/// A fact read as a scalar (see world_state.proto): `text/plain` as text or a number,
/// `application/json` as a JSON scalar; anything else has no scalar value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Bool(bool),
    Num(f64),
    Str(String),
}

pub(super) fn fact_scalar(f: &Fact) -> Option<Scalar> {
    let essence = f
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "text/plain" => {
            let text = std::str::from_utf8(&f.data).ok()?;
            Some(match text.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Scalar::Num(n),
                _ => Scalar::Str(text.to_string()),
            })
        }
        "application/json" => match serde_json::from_slice::<serde_json::Value>(&f.data).ok()? {
            serde_json::Value::Bool(b) => Some(Scalar::Bool(b)),
            serde_json::Value::Number(n) => n.as_f64().map(Scalar::Num),
            serde_json::Value::String(s) => Some(Scalar::Str(s)),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn value_scalar(v: &Value) -> Option<Scalar> {
    Some(match v.kind.as_ref()? {
        value::Kind::BoolValue(b) => Scalar::Bool(*b),
        value::Kind::IntValue(i) => Scalar::Num(*i as f64),
        value::Kind::FloatValue(f) => Scalar::Num(*f),
        value::Kind::StringValue(s) => Scalar::Str(s.clone()),
    })
}

/// Whether a condition holds for the fact (`None`: no live fact). A missing fact fails
/// every operator but NOT_EXISTS; a non-numeric fact fails the numeric ones.
pub(super) fn condition_holds(c: &FactCondition, fact: Option<&Fact>) -> bool {
    let op = FactOperator::try_from(c.op).unwrap_or(FactOperator::Unspecified);
    let Some(fact) = fact else {
        return op == FactOperator::NotExists;
    };
    let (have, want) = (fact_scalar(fact), c.value.as_ref().and_then(value_scalar));
    match op {
        FactOperator::Exists => true,
        FactOperator::NotExists | FactOperator::Unspecified => false,
        FactOperator::Equals => have.is_some() && have == want,
        FactOperator::NotEquals => have.is_some() && have != want,
        FactOperator::LessThan | FactOperator::GreaterThan => match (have, want) {
            (Some(Scalar::Num(a)), Some(Scalar::Num(b))) => {
                if op == FactOperator::LessThan {
                    a < b
                } else {
                    a > b
                }
            }
            _ => false,
        },
    }
}

/// Whether an entry allows a new Accept: `Ok(true)` to (re)start, `Ok(false)` when it is
/// already active (answered unchanged), an error for a completed non-repeatable quest.
pub(super) fn may_accept(entry: Option<&Entry>, repeatable: bool) -> Result<bool, Status> {
    let Some(e) = entry else { return Ok(true) };
    let state = e.quest.as_ref().map_or(0, |q| q.state);
    if e.completing || state == QuestState::Active as i32 {
        return Ok(false);
    }
    if state == QuestState::Completed as i32 && !repeatable {
        return Err(illegal("accept again", state_name(state)));
    }
    Ok(true)
}
