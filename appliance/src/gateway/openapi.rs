//! The OpenAPI 3.1 document of the gateway, generated from the same descriptors the routes
//! come from: one `POST /v1/<domain>/<rpc>` operation per exposed RPC, its request and
//! response schemas derived from the message descriptors by the proto3 JSON mapping (int64
//! as strings, bytes as base64, enums by name, well-known types in their JSON forms), the
//! proto comments as descriptions, bearer security on every non-public operation, and the
//! one error schema. Also the small self-contained docs page that renders it (no CDN).

use std::collections::{BTreeMap, HashMap, VecDeque};

use aicore_proto::{Access, Code, MethodInfo, code_name, descriptor_pool};
use prost_reflect::{FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

/// The docs page: fetches `/openapi.json` and lists routes and schemas.
pub const DOCS_HTML: &str = include_str!("docs.html");

/// Leading comments of every descriptor, by (file, source path).
struct Comments(HashMap<(String, Vec<i32>), String>);

impl Comments {
    fn load() -> Self {
        let mut map = HashMap::new();
        for file in descriptor_pool().files() {
            let Some(info) = &file.file_descriptor_proto().source_code_info else {
                continue;
            };
            for loc in &info.location {
                if let Some(c) = &loc.leading_comments {
                    let text = c
                        .lines()
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join("\n")
                        .trim()
                        .to_string();
                    if !text.is_empty() {
                        map.insert((file.name().to_string(), loc.path.clone()), text);
                    }
                }
            }
        }
        Comments(map)
    }

    fn get(&self, file: &FileDescriptor, path: &[i32]) -> Option<&str> {
        self.0
            .get(&(file.name().to_string(), path.to_vec()))
            .map(String::as_str)
    }
}

fn schema_ref(full_name: &str) -> Value {
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
fn kind_schema(kind: &Kind, pending: &mut VecDeque<MessageDescriptor>) -> Value {
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
    s
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
fn min_items(f: &FieldDescriptor) -> u32 {
    rules_of(f)
        .and_then(|r| r.get_field_by_name("min_items").and_then(|v| v.as_u32()))
        .unwrap_or(0)
}

/// A repeated field's rules: its item counts on the array, the rest on each item.
fn list_rules(f: &FieldDescriptor, schema: &mut serde_json::Map<String, Value>) {
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
fn field_rules(f: &FieldDescriptor, schema: &mut serde_json::Map<String, Value>) {
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
fn required_by_rules(f: &FieldDescriptor) -> bool {
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

fn message_schema(
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

fn error_schema() -> Value {
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
    .chain([super::error::PAYLOAD_TOO_LARGE])
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
fn sse_event_schema(item: &Value) -> Value {
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

/// The OpenAPI document for `methods`.
pub fn document(methods: &[&'static MethodInfo]) -> Value {
    let comments = Comments::load();
    let pool = descriptor_pool();
    let mut pending = VecDeque::new();
    let mut paths = BTreeMap::new();
    let mut tags = BTreeMap::new();
    let error = json!({"$ref": "#/components/responses/Error"});
    for m in methods {
        let service = pool.get_service_by_name(m.service);
        if let Some(svc) = &service {
            let info = aicore_proto::find_service(m.domain);
            let desc = comments
                .get(&svc.parent_file(), svc.path())
                .map(str::to_string)
                .or_else(|| info.map(|i| i.description.to_string()))
                .unwrap_or_default();
            tags.insert(m.domain, desc);
        }
        let description = service
            .as_ref()
            .and_then(|s| s.methods().find(|d| d.name() == m.name))
            .and_then(|d| comments.get(&d.parent_file(), d.path()).map(str::to_string))
            .unwrap_or_default();
        let summary = description
            .split(". ")
            .next()
            .unwrap_or_default()
            .lines()
            .collect::<Vec<_>>()
            .join(" ");
        let input = kind_schema_of(m.input, &mut pending);
        let body_required = descriptor_pool()
            .get_message_by_name(m.input)
            .is_some_and(|d| {
                d.fields().any(|f| {
                    if f.is_list() {
                        min_items(&f) > 0
                    } else {
                        required_by_rules(&f)
                    }
                })
            });
        let output = kind_schema_of(m.output, &mut pending);
        let ok = if m.server_streaming {
            json!({
                "description": format!("A server-sent event stream: one `message` event per `{}` (its JSON in `data`), then one `end` event; an `error` event (an Error in `data`) ends it on failure.", m.output),
                "content": {"text/event-stream": {"schema": sse_event_schema(&output), "x-aicore-event-schema": output}},
            })
        } else {
            json!({"description": "OK", "content": {"application/json": {"schema": output}}})
        };
        let mut responses = serde_json::Map::new();
        responses.insert("200".into(), ok);
        // 410: any path may be retired in the route table (see `routes`).
        let mut statuses = vec!["400", "404", "410", "413", "429", "503", "504"];
        if m.policy.access != Access::Public {
            statuses.push("401");
        }
        if m.policy.access == Access::Roles {
            statuses.push("403");
        }
        statuses.sort_unstable();
        for s in statuses {
            responses.insert(s.into(), error.clone());
        }
        responses.insert("default".into(), error.clone());
        let security = if m.policy.access == Access::Public {
            json!([])
        } else {
            json!([{"bearer": []}])
        };
        let mut op = json!({
            "operationId": format!("{}.{}", m.domain, m.rpc),
            "tags": [m.domain],
            "summary": summary,
            "description": description,
            "requestBody": {
                "required": body_required,
                "description": "The request as proto3 JSON; an empty body is the empty message (refused when the message has required fields).",
                "content": {"application/json": {"schema": input}},
            },
            "parameters": [
                {"name": "X-Request-Timeout-Ms", "in": "header", "required": false,
                 "description": "Deadline in milliseconds (default: the RPC's own, capped by the server).",
                 "schema": {"type": "integer", "minimum": 1}},
                {"name": "X-Request-Id", "in": "header", "required": false,
                 "description": "Request id to carry (generated when absent), echoed in the response; another value is refused with 400.",
                 "schema": {"type": "string", "minLength": 1, "maxLength": super::MAX_REQUEST_ID, "pattern": "^[A-Za-z0-9._:-]+$"}},
            ],
            "responses": responses,
            "security": security,
            "x-aicore-subject": m.subject,
            "x-aicore-read-only": m.policy.read_only,
        });
        if m.policy.access == Access::Roles {
            op["x-aicore-roles"] = json!(m.policy.roles);
        }
        paths.insert(format!("/v1/{}/{}", m.domain, m.rpc), json!({"post": op}));
    }
    for (path, what) in [
        ("/healthz", "The process is alive."),
        (
            "/readyz",
            "NATS is connected and every exposed domain answers; 503 otherwise.",
        ),
    ] {
        paths.insert(
            path.to_string(),
            json!({"get": {
                "operationId": path.trim_start_matches('/'),
                "tags": ["operations"],
                "summary": what,
                "responses": {
                    "200": {"description": what, "content": {"application/json": {"schema": {"type": "object"}}}},
                    "503": {"description": "Not ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                },
            }}),
        );
    }

    let mut schemas = BTreeMap::new();
    while let Some(m) = pending.pop_front() {
        if schemas.contains_key(m.full_name()) {
            continue;
        }
        let s = message_schema(&m, &comments, &mut pending);
        schemas.insert(m.full_name().to_string(), s);
    }
    schemas.insert("Error".to_string(), error_schema());

    let mut tag_list: Vec<Value> = tags
        .into_iter()
        .map(|(name, description)| json!({"name": name, "description": description}))
        .collect();
    tag_list.push(json!({"name": "operations", "description": "Health of the appliance."}));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "AI Core",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every domain RPC as `POST /v1/<domain>/<rpc>` (snake_case as in the NATS subjects; kebab-case is accepted too), JSON by the proto3 JSON mapping. Non-public RPCs need `Authorization: Bearer <access token>` from `POST /v1/auth/login`.",
        },
        "servers": [{"url": "/"}],
        "tags": tag_list,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": {
                    "description": "An error in the common error model.",
                    "content": {"application/json": {"schema": schema_ref("Error")}},
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An access token from auth.Login or auth.Refresh."},
            },
        },
    })
}

/// The schema (a `$ref`, or a well-known type's) of the message named `full_name`.
fn kind_schema_of(full_name: &str, pending: &mut VecDeque<MessageDescriptor>) -> Value {
    match descriptor_pool().get_message_by_name(full_name) {
        Some(m) => kind_schema(&Kind::Message(m), pending),
        None => json!({"type": "object"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_referenced_schema_is_present() {
        let methods: Vec<&'static MethodInfo> = aicore_proto::SERVICES
            .iter()
            .flat_map(|s| s.methods.iter())
            .collect();
        let doc = document(&methods);
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        // Every $ref resolves.
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        let login = &doc["paths"]["/v1/auth/login"]["post"];
        assert_eq!(login["security"], json!([]));
        let gr = &doc["paths"]["/v1/auth/grant_role"]["post"];
        assert_eq!(gr["security"], json!([{"bearer": []}]));
        assert_eq!(gr["x-aicore-roles"], json!(["admin"]));
        assert!(
            schemas["aicore.auth.v1.LoginRequest"]["properties"]["userAgent"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("user agent") || d.contains("client"))
        );
        // Number ranges from the field rules, and a zero they refuse makes the field required.
        let scale = &schemas["aicore.time_manager.v1.SetScaleRequest"];
        assert_eq!(scale["properties"]["scale"]["exclusiveMinimum"], json!(0));
        assert_eq!(scale["properties"]["scale"]["maximum"], json!(100000));
        assert_eq!(scale["required"], json!(["scale"]));
        // proto3 JSON reads null as the default: optional scalars admit it, required don't.
        assert_eq!(scale["properties"]["scale"]["type"], json!("number"));
        // A repeated field's rules: item counts on the array (a least count makes it
        // required), the rest on each item.
        let embed = &schemas["aicore.ai_integration.v1.EmbedRequest"];
        let inputs = &embed["properties"]["inputs"];
        assert_eq!(
            (&inputs["minItems"], &inputs["maxItems"]),
            (&json!(1), &json!(256))
        );
        assert_eq!(inputs["items"]["minLength"], json!(1));
        assert_eq!(embed["required"], json!(["inputs"]));
        // An enum whose zero value is refused: left out, and the field required.
        let message = &schemas["aicore.ai_integration.v1.ChatMessage"];
        assert_eq!(
            message["properties"]["role"]["enum"],
            json!(["ROLE_SYSTEM", "ROLE_USER", "ROLE_ASSISTANT"])
        );
        assert_eq!(message["required"], json!(["role"]));
        let profiles = &schemas["aicore.performance_mode.v1.ProfilesRequest"]["properties"];
        assert_eq!(profiles["pageSize"]["type"], json!(["integer", "null"]));
        assert_eq!(profiles["pageToken"]["type"], json!(["string", "null"]));
        assert_eq!(
            doc["paths"].as_object().unwrap().len(),
            methods.len() + 2,
            "one path per rpc plus /healthz and /readyz"
        );
    }
}
