//! The OpenAPI 3.1 document of the gateway, generated from the same descriptors the routes
//! come from: one `POST /v1/<domain>/<rpc>` operation per exposed RPC, its request and
//! response schemas derived from the message descriptors by the proto3 JSON mapping (int64
//! as strings, bytes as base64, enums by name, well-known types in their JSON forms), the
//! proto comments as descriptions, bearer security on every non-public operation, and the
//! one error schema. Also the small self-contained docs page that renders it (no CDN).
//!
//! This file assembles the document; `schema` derives the schemas, `rules` turns field
//! rules into JSON Schema keywords, `comments` holds the proto comments.

mod comments;
mod rules;
mod schema;

use std::collections::{BTreeMap, VecDeque};

use aicore_proto::{Access, MethodInfo, descriptor_pool};
use prost_reflect::{Kind, MessageDescriptor, ServiceDescriptor};
use serde_json::{Value, json};

use comments::Comments;
use rules::{min_items, required_by_rules};
use schema::{error_schema, kind_schema, message_schema, schema_ref, sse_event_schema};

/// The docs page: fetches `/openapi.json` and lists routes and schemas.
pub const DOCS_HTML: &str = include_str!("../docs.html");

/// The OpenAPI document for `methods`.
pub fn document(methods: &[&'static MethodInfo]) -> Value {
    let comments = Comments::load();
    let pool = descriptor_pool();
    let mut pending = VecDeque::new();
    let mut paths = BTreeMap::new();
    let mut tags = BTreeMap::new();
    for m in methods {
        let service = pool.get_service_by_name(m.service);
        if let Some(svc) = &service {
            tags.insert(m.domain, tag_description(svc, m, &comments));
        }
        let op = operation(m, service.as_ref(), &comments, &mut pending);
        paths.insert(format!("/v1/{}/{}", m.domain, m.rpc), json!({"post": op}));
    }
    health_paths(&mut paths);
    let schemas = schemas(pending, &comments);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "AI Core",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every domain RPC as `POST /v1/<domain>/<rpc>` (snake_case as in the NATS subjects; kebab-case is accepted too), JSON by the proto3 JSON mapping. Non-public RPCs need `Authorization: Bearer <access token>` from `POST /v1/auth/login`.",
        },
        "servers": [{"url": "/"}],
        "tags": tag_list(tags),
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

/// The description of `m`'s domain tag: its service's proto comment, else the domain's
/// own description.
fn tag_description(svc: &ServiceDescriptor, m: &MethodInfo, comments: &Comments) -> String {
    let info = aicore_proto::find_service(m.domain);
    comments
        .get(&svc.parent_file(), svc.path())
        .map(str::to_string)
        .or_else(|| info.map(|i| i.description.to_string()))
        .unwrap_or_default()
}

/// The tags, one per domain in name order, then `operations` for the health paths.
fn tag_list(tags: BTreeMap<&str, String>) -> Vec<Value> {
    let mut tag_list: Vec<Value> = tags
        .into_iter()
        .map(|(name, description)| json!({"name": name, "description": description}))
        .collect();
    tag_list.push(json!({"name": "operations", "description": "Health of the appliance."}));
    tag_list
}

/// The `POST` operation of one RPC; queues the messages its schemas refer to.
fn operation(
    m: &MethodInfo,
    service: Option<&ServiceDescriptor>,
    comments: &Comments,
    pending: &mut VecDeque<MessageDescriptor>,
) -> Value {
    let description = service
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
    let input = kind_schema_of(m.input, pending);
    let body_required = body_required(m.input);
    let output = kind_schema_of(m.output, pending);
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
        "parameters": header_parameters(),
        "responses": responses(m, output),
        "security": security,
        "x-aicore-subject": m.subject,
        "x-aicore-read-only": m.policy.read_only,
    });
    if m.policy.access == Access::Roles {
        op["x-aicore-roles"] = json!(m.policy.roles);
    }
    op
}

/// Whether the request message named `input` has a field its rules make required (then
/// the body is required too).
fn body_required(input: &str) -> bool {
    descriptor_pool()
        .get_message_by_name(input)
        .is_some_and(|d| {
            d.fields().any(|f| {
                if f.is_list() {
                    min_items(&f) > 0
                } else {
                    required_by_rules(&f)
                }
            })
        })
}

/// The request headers every operation takes: a deadline and a request id.
fn header_parameters() -> Value {
    json!([
        {"name": "X-Request-Timeout-Ms", "in": "header", "required": false,
         "description": "Deadline in milliseconds (default: the RPC's own, capped by the server).",
         "schema": {"type": "integer", "minimum": 1}},
        {"name": "X-Request-Id", "in": "header", "required": false,
         "description": "Request id to carry (generated when absent), echoed in the response; another value is refused with 400.",
         "schema": {"type": "string", "minLength": 1, "maxLength": super::MAX_REQUEST_ID, "pattern": "^[A-Za-z0-9._:-]+$"}},
    ])
}

/// The responses of one RPC: 200 with `output` (or an event stream of it), and the error
/// statuses its access policy can give.
fn responses(m: &MethodInfo, output: Value) -> serde_json::Map<String, Value> {
    let error = json!({"$ref": "#/components/responses/Error"});
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
    responses
}

/// Adds `/healthz` and `/readyz`.
fn health_paths(paths: &mut BTreeMap<String, Value>) {
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
}

/// The schemas of the messages in `pending` and of every message they refer to, by full
/// name, and the error schema.
fn schemas(
    mut pending: VecDeque<MessageDescriptor>,
    comments: &Comments,
) -> BTreeMap<String, Value> {
    let mut schemas = BTreeMap::new();
    while let Some(m) = pending.pop_front() {
        if schemas.contains_key(m.full_name()) {
            continue;
        }
        let s = message_schema(&m, comments, &mut pending);
        schemas.insert(m.full_name().to_string(), s);
    }
    schemas.insert("Error".to_string(), error_schema());
    schemas
}

/// The schema (a `$ref`, or a well-known type's) of the message named `full_name`.
fn kind_schema_of(full_name: &str, pending: &mut VecDeque<MessageDescriptor>) -> Value {
    match descriptor_pool().get_message_by_name(full_name) {
        Some(m) => kind_schema(&Kind::Message(m), pending),
        None => json!({"type": "object"}),
    }
}

#[cfg(test)]
mod tests;
