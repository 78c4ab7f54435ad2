//! Conditions on world-state facts, shared by the domains that gate content on them
//! (quest prerequisites, lore fragments, story choices): a fact read as a scalar (see
//! world_state.proto: `text/plain` as text or a number, `application/json` as a JSON
//! scalar) compared with a `common.Value` by one of the operators every such proto
//! declares with the same numbers (`FactOperator`), and [`fetch`], which reads one fact
//! from world-state over NATS.

use aicore_proto::aicore::common::v1::{Value, value};
use aicore_proto::aicore::world_state::v1::Fact;
use aicore_proto::aicore::world_state::v1::{GetRequest, WorldStateClient};
use aicore_proto::{CallOptions, Code, Status};

/// Reads one fact from world-state over NATS: `None` when there is no live fact.
pub async fn fetch(
    ctx: &crate::Ctx,
    key: String,
    options: &CallOptions,
) -> Result<Option<Fact>, Status> {
    let client = WorldStateClient::new(ctx.client()?.clone());
    match client.get(GetRequest { key }, options).await {
        Ok(r) => Ok(r.fact),
        Err(e) if e.code == Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Longest fact key (as world-state allows).
pub const MAX_FACT_KEY_CHARS: usize = 256;

/// A scalar read from a fact or a condition's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A JSON boolean.
    Bool(bool),
    /// A number (text that parses as one, or a JSON number).
    Num(f64),
    /// Any other text.
    Str(String),
}

/// The operators of every `FactOperator` enum, by their proto numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactOp {
    /// 1: the fact exists.
    Exists,
    /// 2: the fact does not exist.
    NotExists,
    /// 3: equal scalars.
    Equals,
    /// 4: an existing fact with another scalar.
    NotEquals,
    /// 5: numerically less.
    LessThan,
    /// 6: numerically greater.
    GreaterThan,
}

impl FactOp {
    /// The operator of proto number `n`; `None` for UNSPECIFIED or an unknown number.
    pub fn from_proto(n: i32) -> Option<FactOp> {
        Some(match n {
            1 => FactOp::Exists,
            2 => FactOp::NotExists,
            3 => FactOp::Equals,
            4 => FactOp::NotEquals,
            5 => FactOp::LessThan,
            6 => FactOp::GreaterThan,
            _ => return None,
        })
    }
}

/// A fact's scalar value, if it has one.
pub fn fact_scalar(f: &Fact) -> Option<Scalar> {
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

/// A condition value's scalar.
pub fn value_scalar(v: &Value) -> Option<Scalar> {
    Some(match v.kind.as_ref()? {
        value::Kind::BoolValue(b) => Scalar::Bool(*b),
        value::Kind::IntValue(i) => Scalar::Num(*i as f64),
        value::Kind::FloatValue(f) => Scalar::Num(*f),
        value::Kind::StringValue(s) => Scalar::Str(s.clone()),
    })
}

/// Whether a condition (`op` as its proto number, `want` its value) holds for the fact
/// (`None`: no live fact). A missing fact fails every operator but NOT_EXISTS; a
/// non-numeric fact fails the numeric ones; an unknown operator never holds.
pub fn holds(op: i32, want: Option<&Value>, fact: Option<&Fact>) -> bool {
    let Some(op) = FactOp::from_proto(op) else {
        return false;
    };
    let Some(fact) = fact else {
        return op == FactOp::NotExists;
    };
    let (have, want) = (fact_scalar(fact), want.and_then(value_scalar));
    match op {
        FactOp::Exists => true,
        FactOp::NotExists => false,
        FactOp::Equals => have.is_some() && have == want,
        FactOp::NotEquals => have.is_some() && have != want,
        FactOp::LessThan | FactOp::GreaterThan => match (have, want) {
            (Some(Scalar::Num(a)), Some(Scalar::Num(b))) => {
                if op == FactOp::LessThan {
                    a < b
                } else {
                    a > b
                }
            }
            _ => false,
        },
    }
}

/// Checks a condition as defined (`field` is its path, e.g. `fragment.conditions.facts[0]`):
/// a key of 1–256 characters without control characters, a known operator, and a value
/// where the operator needs one (a number for the numeric ones). InvalidArgument naming
/// `<field>.key`, `<field>.op` or `<field>.value` otherwise.
pub fn check_condition(
    field: &str,
    key: &str,
    op: i32,
    want: Option<&Value>,
) -> Result<(), Status> {
    let n = key.chars().count();
    if n == 0 || n > MAX_FACT_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(Status::invalid(
            &format!("{field}.key"),
            format!("must be 1 to {MAX_FACT_KEY_CHARS} characters without control characters"),
        ));
    }
    let value = want.and_then(value_scalar);
    match FactOp::from_proto(op) {
        None => Err(Status::invalid(
            &format!("{field}.op"),
            "must be set to a known operator",
        )),
        Some(FactOp::Exists | FactOp::NotExists) => Ok(()),
        Some(FactOp::Equals | FactOp::NotEquals) if value.is_none() => Err(Status::invalid(
            &format!("{field}.value"),
            "is required for EQUALS and NOT_EQUALS",
        )),
        Some(FactOp::Equals | FactOp::NotEquals) => Ok(()),
        Some(FactOp::LessThan | FactOp::GreaterThan) => match value {
            Some(Scalar::Num(_)) => Ok(()),
            _ => Err(Status::invalid(
                &format!("{field}.value"),
                "must be a number for LESS_THAN and GREATER_THAN",
            )),
        },
    }
}
