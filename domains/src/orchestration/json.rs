//! The expression language of step inputs, and the JSON ↔ protobuf crossings a step needs.
//!
//! A step's request is a literal JSON object plus bindings, each copying the value at one
//! JSON pointer (RFC 6901) of the run's context to one JSON pointer of the request. That
//! is the whole language: no string templates, so no value is ever parsed as part of a
//! request's text and none can add fields or change the structure beyond the one place it
//! is put. The run's context is `{"input": …, "steps": {"<step_id>": {"output": …}}}`.
//!
//! Requests become protobuf by the contract's descriptor (proto3 JSON mapping, unknown
//! fields refused), and responses become JSON the same way with every field present, so a
//! pointer into an output finds a field even when it holds its default value.

use aicore_proto::{Code, MethodInfo, Status};
use bytes::Bytes;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

/// Longest pointer, in characters.
pub const MAX_POINTER_CHARS: usize = 256;

/// A pointer's tokens, unescaped (`~1` → `/`, `~0` → `~`); `field` names it in errors.
/// Only pointers to something inside the document (starting with `/`) are accepted.
pub fn parse_pointer(p: &str, field: &str) -> Result<Vec<String>, Status> {
    if p.chars().count() > MAX_POINTER_CHARS || p.chars().any(char::is_control) {
        return Err(Status::invalid(
            field,
            format!("must be at most {MAX_POINTER_CHARS} characters without control characters"),
        ));
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(Status::invalid(
            field,
            "must be a JSON pointer starting with `/`",
        ));
    };
    rest.split('/')
        .map(|t| {
            // `~` must be followed by 0 or 1 (RFC 6901 §3).
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(Status::invalid(
                                field,
                                "`~` must be followed by 0 or 1 (RFC 6901)",
                            ));
                        }
                    },
                    (c, false) => out.push(c),
                }
            }
            Ok(out)
        })
        .collect()
}

/// The value at `tokens` in `doc`, if any.
pub fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t),
        Value::Array(a) => index(t).and_then(|i| a.get(i)),
        _ => None,
    })
}

/// An array index token: decimal digits without a leading zero (RFC 6901).
fn index(t: &str) -> Option<usize> {
    if t.is_empty() || (t.len() > 1 && t.starts_with('0')) || !t.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    t.parse().ok()
}

/// Puts `value` at `tokens` in `doc`, creating missing objects on the way; an array element
/// must exist. Err describes why it cannot go there.
pub fn set(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let Some((last, path)) = tokens.split_last() else {
        return Err("the pointer names the whole request".into());
    };
    let mut at = doc;
    for t in path {
        at = match at {
            Value::Object(m) => m
                .entry(t.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(a) => {
                let i = index(t).ok_or_else(|| format!("`{t}` is not an array index"))?;
                let len = a.len();
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} is past the array's {len} elements"))?
            }
            _ => return Err(format!("`{t}` is inside a value that is not an object")),
        };
    }
    match at {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = index(last).ok_or_else(|| format!("`{last}` is not an array index"))?;
            let len = a.len();
            let slot = a
                .get_mut(i)
                .ok_or_else(|| format!("index {i} is past the array's {len} elements"))?;
            *slot = value;
            Ok(())
        }
        _ => Err(format!("`{last}` is inside a value that is not an object")),
    }
}

/// A `google.protobuf.Struct` as a JSON object.
pub fn from_struct(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_value(v)))
            .collect(),
    )
}

fn from_value(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        // A Struct holds every number as a double; a whole one within the exactly
        // representable range reads as an integer, so it fits an integer field.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_992.0 => {
            Value::Number((*n as i64).into())
        }
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => from_struct(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_value).collect()),
    }
}

/// A JSON value as a `google.protobuf.Struct` (a non-object is wrapped as `{"value": …}`,
/// which never happens for the objects stored here).
pub fn to_struct(v: &Value) -> prost_types::Struct {
    match v {
        Value::Object(m) => prost_types::Struct {
            fields: m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
        },
        other => prost_types::Struct {
            fields: [("value".to_string(), to_value(other))].into(),
        },
    }
}

fn to_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The descriptor of a message a `MethodInfo` names (always present: the tables and the
/// pool come from the same descriptor set).
pub fn descriptor(full_name: &str) -> Result<MessageDescriptor, Status> {
    aicore_proto::descriptor_pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| Status::internal(format!("no descriptor for {full_name}")))
}

/// The request of `method` from its JSON form; InvalidArgument naming `field` (and the
/// JSON path inside it) when it does not fit the message.
pub fn request(method: &MethodInfo, json: Value, field: &str) -> Result<Bytes, Status> {
    let desc = descriptor(method.input)?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let m = DynamicMessage::deserialize_with_options(desc, json, &options).map_err(|e| {
        Status::invalid(
            field,
            format!("is not a valid {} request: {e}", method.name),
        )
    })?;
    Ok(Bytes::from(m.encode_to_vec()))
}

/// The response of `method` as JSON, every field present.
pub fn response(method: &MethodInfo, body: Bytes) -> Result<Value, Status> {
    let desc = descriptor(method.output)?;
    let m = DynamicMessage::decode(desc, body).map_err(|e| {
        Status::new(
            Code::Internal,
            format!(
                "{} replied with an undecodable message: {e}",
                method.subject
            ),
        )
    })?;
    let opts = SerializeOptions::new().skip_default_fields(false);
    m.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| Status::internal(format!("{} reply as JSON: {e}", method.subject)))
}

/// Whether `name` (a request's top-level JSON key, proto or JSON spelling) is the request's
/// idempotency key, which the run sets and a workflow may not.
pub fn is_key_field(method: &MethodInfo, name: &str) -> bool {
    method.idempotency_key != 0
        && descriptor(method.input).is_ok_and(|d| {
            d.get_field(method.idempotency_key)
                .is_some_and(|f| f.name() == name || f.json_name() == name)
        })
}

/// Whether the request of `method` has a top-level field spelled `name` (proto or JSON).
pub fn has_field(method: &MethodInfo, name: &str) -> bool {
    descriptor(method.input).is_ok_and(|d| {
        d.get_field_by_name(name).is_some() || d.get_field_by_json_name(name).is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Vec<String> {
        parse_pointer(s, "f").unwrap()
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc = json!({"a": {"b/c": [10, {"~d": true}]}, "": 1});
        assert_eq!(get(&doc, &p("/a/b~1c/0")), Some(&json!(10)));
        assert_eq!(get(&doc, &p("/a/b~1c/1/~0d")), Some(&json!(true)));
        assert_eq!(get(&doc, &p("/")), Some(&json!(1)));
        assert_eq!(get(&doc, &p("/a/b~1c/01")), None);
        assert_eq!(get(&doc, &p("/a/b~1c/2")), None);
        assert_eq!(get(&doc, &p("/a/x")), None);
        for bad in ["", "a/b", "/a~2", "/a~", "/\u{7}"] {
            assert!(parse_pointer(bad, "f").is_err(), "{bad:?}");
        }
        assert!(parse_pointer(&format!("/{}", "x".repeat(300)), "f").is_err());
    }

    #[test]
    fn set_puts_one_value_and_creates_only_objects() {
        let mut doc = json!({"items": [{"sku": "a"}]});
        set(&mut doc, &p("/player/id"), json!("p1")).unwrap();
        set(&mut doc, &p("/items/0/sku"), json!("b")).unwrap();
        set(&mut doc, &p("/amount"), json!(5)).unwrap();
        assert_eq!(
            doc,
            json!({"items": [{"sku": "b"}], "player": {"id": "p1"}, "amount": 5})
        );
        assert!(set(&mut doc, &p("/items/3/sku"), json!(1)).is_err());
        assert!(set(&mut doc, &p("/amount/x"), json!(1)).is_err());
        // A string that looks like markup stays one string value.
        set(&mut doc, &p("/reason"), json!("\", \"amount\": 9999")).unwrap();
        assert_eq!(doc["amount"], json!(5));
    }

    #[test]
    fn structs_round_trip() {
        let v = json!({"a": [1.5, "x", null, true, {"b": {}}, 30, -2]});
        assert_eq!(from_struct(&to_struct(&v)), v);
    }
}
