//! The HTTP gateway: every RPC of every exposed domain as `POST /v1/<domain>/<rpc>` with a
//! JSON body, without a line of per-domain code. Routes, JSON ↔ protobuf transcoding,
//! access policy and the OpenAPI document all come from the descriptors and the policy
//! options next to the protos; calls go to the domains over NATS through the SDK client
//! (deadlines, retries of idempotent RPCs, circuit breaker, header propagation).
//!
//! Route convention: `/v1/<domain>/<rpc>` in snake_case exactly as in the NATS subject
//! (`svc.state_manager.v1.list_sessions` ↔ `POST /v1/state_manager/list_sessions`);
//! all-kebab-case (`/v1/state-manager/list-sessions`) is accepted as an alias.
//!
//! Before anything else, the router domain's route table ([`routes`]): a path with a
//! disabled route is refused at once (404, or 410 with its reason), a path with an enabled
//! one goes to the route's target with the route's own rate limit taken after the
//! per-client one (429 + Retry-After), and a path without one is served as below.
//! Per request, in order: the in-flight bound (503 + Retry-After when full, never a queue),
//! the access policy of the RPC (public, or a bearer token checked through the cached
//! `auth.Validate` — see [`tokens`] — plus its roles; a token not of auth's shape is 401
//! without a NATS call, and the check runs under the gateway's own deadline,
//! `http.validate_timeout_ms`, never the client's), the per-client rate limit (429 +
//! Retry-After), the deadline (`X-Request-Timeout-Ms` or the RPC's default, counted from
//! the request's arrival, token check included), the body
//! limit (413) and transcoding (400 naming the field), then the call. The caller's identity
//! travels to the domain in `Aicore-Caller`/`Aicore-Caller-Roles`/`Aicore-Caller-Session`,
//! set only from the
//! validated token: nothing from the HTTP request is copied into NATS headers except the
//! request id and the trace context, which are also echoed in the response. The client's
//! IP address goes along in `Aicore-Client-Addr`, taken from the TCP peer (auth throttles
//! logins per source address with it; behind a reverse proxy that is the proxy).
//! Server-streaming RPCs answer Server-Sent Events. Shutdown stops accepting, ends open
//! streams with an `error` event and lets in-flight requests finish (bounded by the drain
//! timeout). TLS is not here (a later issue).

mod body;
mod error;
pub mod health;
mod limits;
pub mod metrics;
pub mod openapi;
mod pages;
mod request_trace;
pub mod routes;
pub mod tokens;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use aicore_proto::aicore::auth::v1::AuthClient;
use aicore_proto::{Access, CallOptions, Code, MethodInfo, Status, Transport};
use aicore_runtime::trace::{self, TraceParent};
use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use prost_reflect::MessageDescriptor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::HttpConfig;
use crate::security::ClientTls;
use body::*;
pub use error::ApiError;
use limits::{Client, RateLimiter};
use metrics::Metrics;
use pages::*;
use request_trace::*;
use tokens::Tokens;

/// HTTP header carrying a request's deadline in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";
/// HTTP header carrying the request id (taken from the client when sane, else generated).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One exposed RPC.
struct Route {
    method: &'static MethodInfo,
    /// `/v1/<domain>/<rpc>`, the key of its entry in the route table.
    path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
}

/// What every request handler shares.
struct Gateway {
    routes: Vec<Route>,
    client: aicore_sdk::Client,
    auth: AuthClient<aicore_sdk::Client>,
    nats: async_nats::Client,
    tokens: Arc<Tokens>,
    table: Arc<routes::RouteTable>,
    limiter: RateLimiter,
    in_flight: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Every part's figures; `/metrics` renders it.
    registry: Arc<aicore_runtime::metrics::Registry>,
    ready: health::Ready,
    openapi: Bytes,
    config: HttpConfig,
    /// The body limit ([`crate::config::Config::http_max_body_bytes`]).
    max_body: usize,
    /// Cancelled on shutdown: open streams end.
    stopping: CancellationToken,
}

type Shared = Arc<Gateway>;

/// A running gateway; [`Server::stop`] drains it.
pub struct Server {
    /// The address it listens on (the configured port, or the one picked for port 0).
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    drain: Duration,
}

impl Server {
    /// Stops accepting, ends streams, and waits for in-flight requests (at most the drain
    /// timeout; then they are cut).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(self.drain, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                drain_secs = self.drain.as_secs(),
                "gateway drain timed out; cutting remaining requests"
            );
            self.task.abort();
        }
        tracing::info!("gateway stopped");
    }
}

/// Connects to NATS as the gateway (its own connection: revocation notices arrive on it,
/// and a reconnect drops the Validate cache since notices may have been missed).
async fn connect(
    url: &str,
    tls: Option<&ClientTls>,
    tokens: Arc<Tokens>,
) -> Result<async_nats::Client> {
    crate::security::with_tls(async_nats::ConnectOptions::new(), tls)
        .name("aicore-gateway")
        .custom_inbox_prefix(crate::security::inbox_prefix("gateway"))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(move |event| {
            let tokens = tokens.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    tokens.clear();
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("gateway connecting to NATS at {url}"))
}

/// Starts the gateway for `domains` on its own connection to `nats_url`, listening as
/// configured, until [`Server::stop`] or `stop` is cancelled.
#[allow(clippy::too_many_arguments)] // the gateway's whole start-up context, from the supervisor
pub async fn start(
    config: &HttpConfig,
    max_body_bytes: u32,
    max_payload: u32,
    nats_url: &str,
    tls: Option<&ClientTls>,
    domains: Vec<&'static str>,
    registry: Arc<aicore_runtime::metrics::Registry>,
    stop: CancellationToken,
) -> Result<Server> {
    let (router, gateway) = build(
        config,
        max_body_bytes,
        max_payload,
        nats_url,
        tls,
        domains,
        registry,
        stop.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("gateway listening on {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    // Each SSE event is its own small write: with Nagle's algorithm on, an event waits
    // for the client's (delayed, up to 40 ms) ACK of the previous one. Measured on the
    // AI time-to-first-token bench: p99 45 ms with it, see BENCHMARKS.md.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a gateway connection");
        }
    });
    let listen_stop = stop.clone();
    let task = tokio::spawn(async move {
        let r = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(listen_stop.cancelled_owned())
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "gateway server failed");
        }
        drop(gateway);
    });
    tracing::info!(%addr, "gateway listening");
    Ok(Server {
        addr,
        stop,
        task,
        drain: Duration::from_secs(config.drain_timeout_secs),
    })
}

/// The gateway's router (with connect info needed: serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`), and the gateway's revocation
/// listener task, which lives until `stop`.
#[allow(clippy::too_many_arguments)] // the gateway's whole start-up context, from the supervisor
pub async fn build(
    config: &HttpConfig,
    max_body_bytes: u32,
    max_payload: u32,
    nats_url: &str,
    tls: Option<&ClientTls>,
    domains: Vec<&'static str>,
    registry: Arc<aicore_runtime::metrics::Registry>,
    stop: CancellationToken,
) -> Result<(Router, tokio::task::JoinHandle<()>)> {
    if max_body_bytes >= max_payload {
        bail!(
            "the HTTP body limit ({max_body_bytes} bytes: http.max_body_bytes, or when unset \
             the largest object a domain accepts as base64) must be below nats.max_payload \
             ({max_payload})"
        );
    }
    let mut routes = Vec::new();
    for d in &domains {
        let service = aicore_proto::find_service(d)
            .with_context(|| format!("no contract for domain {d:?}"))?;
        for m in service.methods {
            routes.push(Route {
                method: m,
                path: canonical_path(m),
                input: crate::json::descriptor(m.input).map_err(|e| anyhow::anyhow!("{e}"))?,
                output: crate::json::descriptor(m.output).map_err(|e| anyhow::anyhow!("{e}"))?,
            });
        }
    }
    let metrics = Arc::new(Metrics::new(
        routes.iter().map(|r| canonical_path(r.method)).collect(),
        registry.switch(),
    ));
    registry.register(metrics.clone());
    let tokens = Arc::new(Tokens::new(
        Duration::from_millis(config.validate_cache_ttl_ms),
        config.validate_cache_capacity,
        metrics.clone(),
    ));
    let nats = connect(nats_url, tls, tokens.clone()).await?;
    let listener = tokens
        .clone()
        .listen(nats.clone(), stop.clone())
        .await
        .context("subscribing to revocation notices")?;
    nats.flush()
        .await
        .context("flushing the gateway's subscriptions")?;
    let client = aicore_sdk::Client::new(nats.clone(), Default::default());
    let methods: Vec<&'static MethodInfo> = routes.iter().map(|r| r.method).collect();
    let table = Arc::new(routes::RouteTable::new(&methods, config.rate_limit_clients));
    table
        .clone()
        .keep_current(
            client.clone(),
            Duration::from_millis(config.route_refresh_ms),
            Duration::from_millis(config.validate_timeout_ms),
            stop.clone(),
        )
        .await
        .context("subscribing to route table changes")?;
    let openapi = Bytes::from(openapi::document(&methods).to_string());
    let gateway = Arc::new(Gateway {
        auth: AuthClient::new(client.clone()),
        client,
        nats,
        tokens,
        table,
        limiter: RateLimiter::new(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
            config.rate_limit_clients,
        ),
        in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1) as usize)),
        streams: Arc::new(Semaphore::new(config.max_streams.max(1) as usize)),
        metrics,
        registry,
        ready: health::Ready::new(domains, Duration::from_millis(config.ready_cache_ms)),
        openapi,
        config: config.clone(),
        max_body: max_body_bytes as usize,
        stopping: stop,
        routes,
    });

    let mut router: Router<Shared> = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs));
    for (i, r) in gateway.routes.iter().enumerate() {
        let rpc = move |State(gw): State<Shared>,
                        ConnectInfo(peer): ConnectInfo<SocketAddr>,
                        headers: HeaderMap,
                        body: Body| async move {
            let resolved = gw.table.resolve(&gw.routes[i].path);
            handle(gw, Some(i), resolved, peer, headers, body).await
        };
        let canonical = canonical_path(r.method);
        let kebab = canonical.replace('_', "-");
        let method_router = post(rpc).fallback(method_not_allowed);
        if kebab != canonical {
            router = router.route(&kebab, method_router.clone());
        }
        router = router.route(&canonical, method_router);
    }
    let mut router = router.fallback(not_found).with_state(gateway.clone());
    if let Some(cors) = cors(&config.cors_origins)? {
        router = router.layer(cors);
    }
    Ok((router, listener))
}

/// `/v1/<domain>/<rpc>`.
fn canonical_path(m: &MethodInfo) -> String {
    format!("/v1/{}/{}", m.domain, m.rpc)
}

fn cors(origins: &[String]) -> Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).with_context(|| format!("http.cors_origins: {o:?}")))
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(TIMEOUT_HEADER),
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static("traceparent"),
                header::RETRY_AFTER,
            ])
            .max_age(Duration::from_secs(600)),
    ))
}

/// Keeps the in-flight gauge right even when the client goes away mid-request.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one request to descriptor route `descriptor` (none: a path only the route table
/// knows), after the table's say on its path, `resolved`.
async fn handle(
    gw: Shared,
    descriptor: Option<usize>,
    resolved: Result<Option<routes::Routed>, ApiError>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let started = SystemTime::now();
    let trace = Trace::from_headers(&headers);
    gw.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let guard = InFlight(&gw.metrics);
    let (route, outcome) = match resolved {
        Ok(Some(r)) => (
            Some(r.target),
            call(&gw, r.target, r.limit, peer, &headers, body, &trace).await,
        ),
        Ok(None) => match descriptor {
            Some(i) => (
                Some(i),
                call(&gw, i, None, peer, &headers, body, &trace).await,
            ),
            None => (None, Err(Status::not_found("no route").into())),
        },
        Err(refused) => (descriptor, Err(refused)),
    };
    let mut response = match outcome {
        Ok(r) => r,
        Err(e) => {
            if e.status.code == Code::Internal {
                let subject = route.map_or("", |r| gw.routes[r].method.subject);
                tracing::error!(request_id = %trace.request_id, route = subject, error = %e.status, "request failed");
            }
            e.into_response()
        }
    };
    drop(guard);
    trace.stamp(response.headers_mut());
    let name = route.map_or("unrouted", |r| gw.routes[r].method.subject);
    trace.record(name, started, response.status());
    let metric = route.unwrap_or_else(|| gw.metrics.unmatched());
    gw.metrics
        .record(metric, response.status().as_u16(), start.elapsed());
    response
}

fn overloaded(what: &str) -> ApiError {
    ApiError::new(
        Status::new(
            Code::Unavailable,
            format!("the gateway is at its limit of {what}; retry shortly"),
        )
        .with_retry_after(Duration::from_secs(1)),
    )
}

impl Gateway {
    fn limit(&self, client: Client<'_>) -> Result<(), ApiError> {
        self.limiter.check(client).map_err(|wait| {
            self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                Status::new(Code::ResourceExhausted, "rate limit exceeded; slow down")
                    .with_retry_after(wait),
            )
        })
    }

    /// The deadline: the client's header (capped), else the RPC's default, else ours.
    fn deadline(&self, headers: &HeaderMap, m: &MethodInfo) -> Result<Duration, ApiError> {
        if let Some(v) = headers.get(TIMEOUT_HEADER) {
            // Any positive whole number (as the OpenAPI document says); more than the
            // longest deadline is the longest deadline, however many digits it has.
            let ms = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .map(|s| s.parse::<u64>().unwrap_or(u64::MAX))
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    Status::invalid(
                        "X-Request-Timeout-Ms",
                        "must be a positive whole number of milliseconds",
                    )
                })?;
            return Ok(Duration::from_millis(ms.min(self.config.max_deadline_ms)));
        }
        Ok(Duration::from_millis(match m.policy.default_deadline_ms {
            0 => self.config.default_deadline_ms,
            ms => u64::from(ms),
        }))
    }
}

/// The bearer token of `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `token` has the shape of the access tokens auth issues: `at_` and 256 random
/// bits in unpadded base64url (43 characters; `domains/src/auth.rs`, `new_token`).
/// Anything else cannot validate, so it is refused without asking auth.
fn access_token_shaped(token: &str) -> bool {
    token.strip_prefix("at_").is_some_and(|secret| {
        secret.len() == 43
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

async fn call(
    gw: &Gateway,
    route: usize,
    route_limit: Option<Arc<routes::RouteLimit>>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
    trace: &Trace,
) -> Result<Response, ApiError> {
    let r = &gw.routes[route];
    let m = r.method;
    check_request_id(headers)?;
    let _permit = gw.in_flight.clone().try_acquire_owned().map_err(|_| {
        gw.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
        overloaded("requests in flight")
    })?;
    let stream_permit = match m.server_streaming {
        true => Some(gw.streams.clone().try_acquire_owned().map_err(|_| {
            gw.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
            overloaded("open streams")
        })?),
        false => None,
    };
    // The client's deadline counts from here, token check included.
    let deadline = Instant::now() + gw.deadline(headers, m)?;
    let mut options = CallOptions {
        timeout: None,
        caller: None,
        traceparent: Some(trace.traceparent.clone()),
        request_id: Some(trace.request_id.clone()),
        // From the TCP peer, never from a request header: auth throttles logins by it.
        client_addr: Some(peer.ip().to_canonical().to_string()),
        caller_session: None,
        // A client's write is retried inside the appliance only with its own key.
        idempotency_key: aicore_proto::IdempotencyKey::AsIs,
    };

    // Who is calling, by the RPC's policy; then their rate limit.
    if m.policy.access == Access::Public {
        gw.limit(Client::Ip(peer.ip()))?;
    } else {
        let token = bearer(headers).ok_or_else(|| {
            Status::unauthenticated("this call needs an `Authorization: Bearer <access token>`")
        })?;
        if !access_token_shaped(token) {
            // Not something auth issues: refused here, without a NATS call.
            return Err(Status::unauthenticated("the bearer token is not an access token").into());
        }
        let bearer = match gw.tokens.cached(token) {
            Some(c) => c,
            None => {
                // Unknown tokens cost the client address too, so a flood of made-up
                // tokens cannot reach auth unbounded. The check runs under the gateway's
                // own deadline: it is shared by every client (one breaker, one cache),
                // so a client's short deadline must not make auth look unresponsive.
                gw.limit(Client::Ip(peer.ip()))?;
                let check = CallOptions {
                    timeout: Some(Duration::from_millis(gw.config.validate_timeout_ms)),
                    ..options.clone()
                };
                gw.tokens.fetch(&gw.auth, token, &check).await?
            }
        };
        let caller = bearer.caller;
        if m.policy.access == Access::Roles && !m.policy.roles.iter().any(|r| caller.has_role(r)) {
            return Err(Status::new(
                Code::PermissionDenied,
                format!("this call needs one of the roles {:?}", m.policy.roles),
            )
            .into());
        }
        gw.limit(Client::Account(&caller.account_id))?;
        options.caller = Some(caller);
        options.caller_session = Some(bearer.session_id);
    }
    if let Some(l) = route_limit {
        let account = options.caller.as_ref().map(|c| c.account_id.as_str());
        l.check(peer.ip(), account)
            .inspect_err(|_| _ = gw.metrics.rate_limited.fetch_add(1, Ordering::Relaxed))?;
    }

    let json = read_body(headers, body, gw.max_body).await?;
    let request = crate::json::to_protobuf(&r.input, &json)?;
    options.timeout = Some(deadline.saturating_duration_since(Instant::now()));

    if let Some(permit) = stream_permit {
        let upstream = gw.client.server_stream(m, request, &options).await?;
        return Ok(sse(gw, r.output.clone(), upstream, permit));
    }
    let reply = gw.client.unary(m, request, &options).await?;
    let bound = Duration::from_millis(gw.config.validate_timeout_ms);
    gw.table.after_call(m, &reply, bound).await;
    let mut json = crate::json::from_protobuf(&r.output, reply, false)?;
    json.push(b'\n');
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response())
}

#[cfg(test)]
mod tests;
