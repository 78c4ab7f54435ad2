//! The `(aicore.common.v1.field)` rules of a field as JSON Schema keywords: lengths,
//! patterns, number ranges, item counts, refused enum zeros, and whether the rules make a
//! field required.

use aicore_proto::descriptor_pool;
use prost_reflect::{FieldDescriptor, Kind};
use serde_json::{Value, json};

/// The field's `(aicore.common.v1.field)` rules, when it has any.
fn rules_of(f: &FieldDescriptor) -> Option<prost_reflect::DynamicMessage> {
    let ext = descriptor_pool().get_extension_by_name("aicore.common.v1.field")?;
    let options = f.options();
    if !options.has_extension(&ext) {
        return None;
    }
    options.get_extension(&ext).as_message().cloned()
}

/// Fewest items the rules of repeated field `f` allow (0 when they say nothing).
pub(super) fn min_items(f: &FieldDescriptor) -> u32 {
    rules_of(f)
        .and_then(|r| r.get_field_by_name("min_items").and_then(|v| v.as_u32()))
        .unwrap_or(0)
}

/// A repeated field's rules: its item counts on the array, the rest on each item.
pub(super) fn list_rules(f: &FieldDescriptor, schema: &mut serde_json::Map<String, Value>) {
    let Some(rules) = rules_of(f) else {
        return;
    };
    let count = |name: &str| {
        rules
            .get_field_by_name(name)
            .and_then(|v| v.as_u32())
            .filter(|n| *n > 0)
    };
    if let Some(n) = count("min_items") {
        schema.insert("minItems".into(), n.into());
    }
    if let Some(n) = count("max_items") {
        schema.insert("maxItems".into(), n.into());
    }
    if let Some(Value::Object(items)) = schema.get_mut("items")
        && !items.contains_key("$ref")
    {
        field_rules(f, items);
    }
}

/// The range rules of a number and their JSON Schema keywords.
const RANGES: [(&str, &str); 3] = [
    ("minimum", "minimum"),
    ("maximum", "maximum"),
    ("exclusive_minimum", "exclusiveMinimum"),
];

/// The field's `(aicore.common.v1.field)` rules as JSON Schema keywords.
pub(super) fn field_rules(f: &FieldDescriptor, schema: &mut serde_json::Map<String, Value>) {
    let Some(rules) = rules_of(f) else {
        return;
    };
    let get = |name: &str| rules.get_field_by_name(name).map(|v| v.into_owned());
    if let Some(n) = get("min_len").and_then(|v| v.as_u32()).filter(|n| *n > 0) {
        schema.insert("minLength".into(), n.into());
    }
    if let Some(n) = get("max_len").and_then(|v| v.as_u32()).filter(|n| *n > 0) {
        schema.insert("maxLength".into(), n.into());
    }
    if let Some(p) = get("pattern").and_then(|v| v.as_str().map(str::to_owned))
        && !p.is_empty()
    {
        schema.insert("pattern".into(), p.into());
    }
    // Ranges of numbers. A 64-bit integer is a oneOf of its decimal-string and number
    // forms (responses use the string), and JSON Schema cannot range-check a string: the
    // range goes on its number form.
    if let Some(Value::Array(forms)) = schema.get_mut("oneOf")
        && let Some(Value::Object(number)) = forms.iter_mut().find(|v| v["type"] == "integer")
    {
        range_rules(&rules, number, true);
    }
    let is_number = matches!(
        schema.get("type").and_then(Value::as_str),
        Some("integer" | "number")
    );
    range_rules(&rules, schema, is_number);
    if specified(&rules)
        && let Kind::Enum(e) = f.kind()
        && let Some(zero) = e.get_value(0)
        && let Some(Value::Array(values)) = schema.get_mut("enum")
    {
        values.retain(|v| v.as_str() != Some(zero.name()));
    }
    if get("no_control_chars").and_then(|v| v.as_bool()) == Some(true) {
        // Unanchored, so no `$` (which Python lets match before a final newline).
        schema.insert("not".into(), json!({"pattern": "[\\x00-\\x1f\\x7f-\\x9f]"}));
    }
}

/// Puts the range rules on a number's schema (nothing when it is not one).
fn range_rules(
    rules: &prost_reflect::DynamicMessage,
    schema: &mut serde_json::Map<String, Value>,
    is_number: bool,
) {
    for (rule, keyword) in RANGES {
        if is_number
            && rules.has_field_by_name(rule)
            && let Some(n) = rules.get_field_by_name(rule).and_then(|v| v.as_f64())
        {
            schema.insert(keyword.into(), json_number(n));
        }
    }
}

/// `n` as a JSON integer when it is one (so an integer field's bound reads `1`, not `1.0`).
fn json_number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

/// Whether `rules` refuse an enum's zero value.
fn specified(rules: &prost_reflect::DynamicMessage) -> bool {
    rules
        .get_field_by_name("specified")
        .and_then(|v| v.as_bool())
        == Some(true)
}

/// Whether the field's rules refuse its default (the empty string, or a zero outside the
/// number's range): then the field is required, since absent is the same as the default
/// in proto3 JSON (unless the field tracks presence).
pub(super) fn required_by_rules(f: &FieldDescriptor) -> bool {
    let mut s = serde_json::Map::new();
    let number = matches!(
        f.kind(),
        Kind::Double
            | Kind::Float
            | Kind::Int32
            | Kind::Sint32
            | Kind::Sfixed32
            | Kind::Uint32
            | Kind::Fixed32
            | Kind::Int64
            | Kind::Sint64
            | Kind::Sfixed64
            | Kind::Uint64
            | Kind::Fixed64
    );
    if number {
        s.insert("type".into(), "number".into());
    }
    field_rules(f, &mut s);
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    let zero_refused = num("minimum").is_some_and(|n| n > 0.0)
        || num("maximum").is_some_and(|n| n < 0.0)
        || num("exclusiveMinimum").is_some_and(|n| n >= 0.0);
    let zero_enum = rules_of(f).is_some_and(|r| specified(&r));
    s.get("minLength")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 0)
        || (((number && zero_refused) || zero_enum) && !f.supports_presence())
}
