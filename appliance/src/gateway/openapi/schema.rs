//! JSON schemas from the message descriptors by the proto3 JSON mapping: one value of a
//! kind, a field (with its rules and `null` where the default is valid), a whole message,
//! the well-known types, the error model and a server-sent event.

use std::collections::VecDeque;

use aicore_proto::{Code, code_name};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use super::comments::Comments;
use super::rules::{field_rules, list_rules, min_items, required_by_rules};

pub(super) fn schema_ref(full_name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{full_name}") })
}

/// The JSON schema of a well-known type, or `None` for an ordinary message.
fn well_known(full_name: &str) -> Option<Value> {
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$", "examples": ["1.5s"]})
        }
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Any" => {
            json!({"type": "object", "properties": {"@type": {"type": "string"}}})
        }
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            json!({"type": ["number", "null"]})
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": ["string", "integer", "null"], "format": "int64"})
        }
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({"type": ["integer", "null"]})
        }
        "google.protobuf.BoolValue" => json!({"type": ["boolean", "null"]}),
        "google.protobuf.StringValue" => json!({"type": ["string", "null"]}),
        "google.protobuf.BytesValue" => {
            json!({"type": ["string", "null"], "contentEncoding": "base64"})
        }
        _ => return None,
    })
}

/// The schema of one value of `kind` (not repeated); queues messages it refers to.
pub(super) fn kind_schema(kind: &Kind, pending: &mut VecDeque<MessageDescriptor>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        // The proto3 JSON mapping writes 64-bit integers as strings and reads either: a
        // string of digits (never empty) or a number, within the type's range.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
            "oneOf": [
                {"type": "string", "pattern": "^-?[0-9]{1,19}$"},
                {"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX},
            ],
            "format": "int64",
        }),
        Kind::Uint64 | Kind::Fixed64 => json!({
            "oneOf": [
                {"type": "string", "pattern": "^[0-9]{1,20}$"},
                {"type": "integer", "minimum": 0, "maximum": u64::MAX},
            ],
            "format": "uint64",
        }),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => json!({
            "type": "string",
            "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>(),
        }),
        Kind::Message(m) => match well_known(m.full_name()) {
            Some(s) => s,
            None => {
                pending.push_back(m.clone());
                schema_ref(m.full_name())
            }
        },
    }
}

fn field_schema(
    f: &FieldDescriptor,
    comments: &Comments,
    pending: &mut VecDeque<MessageDescriptor>,
) -> Value {
    let mut s = if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            return json!({"type": "object"});
        };
        json!({
            "type": "object",
            "additionalProperties": kind_schema(&entry.map_entry_value_field().kind(), pending),
        })
    } else if f.is_list() {
        json!({"type": "array", "items": kind_schema(&f.kind(), pending)})
    } else {
        kind_schema(&f.kind(), pending)
    };
    if let Some(obj) = s.as_object_mut()
        && !f.is_map()
    {
        if f.is_list() {
            list_rules(f, obj);
        } else {
            field_rules(f, obj);
        }
    }
    // The proto3 JSON mapping reads `null` as the field's default, and the gateway does:
    // say so wherever the default is a valid value (a field its rules make required is
    // refused as null, like absent). Oneof members and messages keep their own schema.
    if let Some(obj) = s.as_object_mut()
        && !f.is_list()
        && !f.is_map()
        && f.containing_oneof().is_none()
        && !matches!(f.kind(), Kind::Message(_))
        && !required_by_rules(f)
    {
        admit_null(obj);
    }
    if let Some(c) = comments.get(&f.parent_file(), f.path())
        && let Some(obj) = s.as_object_mut()
    {
        // Beside a $ref too: OpenAPI 3.1 allows the sibling.
        obj.insert("description".into(), c.into());
    }
    if is_page_token(f)
        && let Some(obj) = s.as_object_mut()
    {
        obj.insert("format".into(), PAGE_TOKEN_FORMAT.into());
        obj.insert("description".into(), PAGE_TOKEN_DESCRIPTION.into());
    }
    s
}

/// The string format of a list request's page token (API.md's paging convention).
pub const PAGE_TOKEN_FORMAT: &str = "aicore-page-token";

const PAGE_TOKEN_DESCRIPTION: &str = "Opaque: empty for the first page, else the `next_page_token` of the previous page of the same listing. Any other value is refused with INVALID_ARGUMENT naming `page_token`.";

/// Whether `f` is a list request's page token: a string `page_token` in a message that
/// also asks for a `page_size`.
fn is_page_token(f: &FieldDescriptor) -> bool {
    f.name() == "page_token"
        && matches!(f.kind(), Kind::String)
        && !f.is_list()
        && f.parent_message().get_field_by_name("page_size").is_some()
}

/// Widens a scalar's schema to admit JSON `null` too.
fn admit_null(schema: &mut serde_json::Map<String, Value>) {
    if let Some(Value::String(t)) = schema.get("type").cloned() {
        schema.insert("type".into(), json!([t, "null"]));
    }
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        values.push(Value::Null);
    }
    if let Some(Value::Array(choices)) = schema.get_mut("oneOf") {
        choices.push(json!({"type": "null"}));
    }
}

pub(super) fn message_schema(
    m: &MessageDescriptor,
    comments: &Comments,
    pending: &mut VecDeque<MessageDescriptor>,
) -> Value {
    let mut properties = serde_json::Map::new();
    for f in m.fields() {
        properties.insert(
            f.json_name().to_string(),
            field_schema(&f, comments, pending),
        );
    }
    // Unknown fields are refused (json.rs parses with deny_unknown_fields).
    let mut s = json!({"type": "object", "properties": properties, "additionalProperties": false});
    let required: Vec<String> = m
        .fields()
        .filter(|f| {
            if f.is_list() {
                min_items(f) > 0
            } else {
                !f.is_map() && required_by_rules(f)
            }
        })
        .map(|f| f.json_name().to_string())
        .collect();
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    if let Some(c) = comments.get(&m.parent_file(), m.path()) {
        s["description"] = c.into();
    }
    let oneofs: Vec<String> = m
        .oneofs()
        .filter(|o| !o.is_synthetic())
        .map(|o| {
            let names: Vec<String> = o.fields().map(|f| f.json_name().to_string()).collect();
            format!("`{}`: at most one of {}", o.name(), names.join(", "))
        })
        .collect();
    // At most one member of each oneof group (the parser refuses two).
    let exclusive: Vec<Value> = m
        .oneofs()
        .filter(|o| !o.is_synthetic())
        .flat_map(|o| {
            let names: Vec<String> = o.fields().map(|f| f.json_name().to_string()).collect();
            let mut pairs = Vec::new();
            for (i, a) in names.iter().enumerate() {
                for b in &names[i + 1..] {
                    pairs.push(json!({"not": {"required": [a, b]}}));
                }
            }
            pairs
        })
        .collect();
    if !exclusive.is_empty() {
        s["allOf"] = Value::Array(exclusive);
    }
    if !oneofs.is_empty() {
        let d = s["description"].as_str().unwrap_or_default().to_string();
        let sep = if d.is_empty() { "" } else { "\n\n" };
        s["description"] = format!("{d}{sep}One-of groups: {}.", oneofs.join("; ")).into();
    }
    s
}

pub(super) fn error_schema() -> Value {
    let codes: Vec<&str> = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::Conflict,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Internal,
    ]
    .into_iter()
    .map(code_name)
    .chain([crate::gateway::error::PAYLOAD_TOO_LARGE])
    .collect();
    json!({
        "type": "object",
        "description": "The common error model. `code` decides the HTTP status: INVALID_ARGUMENT 400, PAYLOAD_TOO_LARGE 413 (a body over the limit), UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, CONFLICT 409, FAILED_PRECONDITION 412, RESOURCE_EXHAUSTED 429, INTERNAL 500, UNAVAILABLE 503, DEADLINE_EXCEEDED 504. 429 and 503 carry Retry-After.",
        "required": ["code", "message", "field_violations"],
        "properties": {
            "code": {"type": "string", "enum": codes},
            "message": {"type": "string", "description": "For developers; never secrets."},
            "field_violations": {
                "type": "array",
                "description": "The offending fields, by path (`items[2].amount`).",
                "items": {
                    "type": "object",
                    "required": ["field", "description"],
                    "properties": {
                        "field": {"type": "string"},
                        "description": {"type": "string"},
                    },
                },
            },
        },
    })
}

/// The schema of one server-sent event of a streaming RPC: its `event` name and its
/// `data`, the JSON of an item (`message`), an Error (`error`) or `{}` (`end`).
pub(super) fn sse_event_schema(item: &Value) -> Value {
    json!({
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "enum": ["message", "end", "error"]},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [item, schema_ref("Error"), {"type": "object", "maxProperties": 0}]},
            },
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    })
}
