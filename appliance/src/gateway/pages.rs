//! The gateway's own pages: health, readiness, metrics, the OpenAPI document and its
//! docs, and the answers for unknown paths and methods.

use super::*;

pub(super) async fn healthz() -> Response {
    json_response(StatusCode::OK, "{\"status\":\"ok\"}\n".to_string())
}

pub(super) async fn readyz(State(gw): State<Shared>) -> Response {
    let r = gw.ready.check(&gw.nats).await;
    let status = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, r.body() + "\n")
}

pub(super) async fn metrics_text(State(gw): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        gw.registry.render().await,
    )
        .into_response()
}

pub(super) async fn openapi_json(State(gw): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        gw.openapi.clone(),
    )
        .into_response()
}

pub(super) async fn docs() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        openapi::DOCS_HTML,
    )
        .into_response()
}

pub(super) fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub(super) async fn not_found(
    State(gw): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A path only the route table knows (an alias, a new version's path).
    if method == Method::POST {
        match gw.table.resolve(uri.path()) {
            Ok(None) => {}
            resolved => return handle(gw, None, resolved, peer, headers, body).await,
        }
    }
    let start = Instant::now();
    let mut r = ApiError::new(Status::not_found(format!(
        "no route {method} {}: unknown domain or rpc (routes are POST /v1/<domain>/<rpc>; see /openapi.json)",
        uri.path()
    )))
    .into_response();
    Trace::from_headers(&headers).stamp(r.headers_mut());
    gw.metrics
        .record(gw.metrics.unmatched(), r.status().as_u16(), start.elapsed());
    r
}

pub(super) async fn method_not_allowed(method: Method) -> Response {
    let mut r = ApiError::with_http(
        StatusCode::METHOD_NOT_ALLOWED,
        Status::new(
            Code::InvalidArgument,
            format!("{method} is not allowed: RPC routes take POST"),
        ),
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}
