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
//!
//! This file holds the shared state and starts the server; `setup` puts the gateway
//! together, `call` serves one request.

mod body;
mod call;
mod error;
pub mod health;
mod limits;
pub mod metrics;
pub mod openapi;
mod pages;
mod request_trace;
pub mod routes;
mod setup;
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
use call::*;
pub use error::ApiError;
use limits::{Client, RateLimiter};
use metrics::Metrics;
use pages::*;
use request_trace::*;
pub use setup::build;
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

/// `/v1/<domain>/<rpc>`.
fn canonical_path(m: &MethodInfo) -> String {
    format!("/v1/{}/{}", m.domain, m.rpc)
}

#[cfg(test)]
mod tests;
