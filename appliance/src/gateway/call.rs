//! One request through the gateway: the in-flight gauge and bounds, the deadline, who is
//! calling (bearer token, roles) and their rate limits, the body, the call over NATS and
//! its reply (JSON, or Server-Sent Events for a streaming RPC), and the metrics.

use super::*;

/// Keeps the in-flight gauge right even when the client goes away mid-request.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one request to descriptor route `descriptor` (none: a path only the route table
/// knows), after the table's say on its path, `resolved`.
pub(super) async fn handle(
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
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
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
pub(super) fn access_token_shaped(token: &str) -> bool {
    token.strip_prefix("at_").is_some_and(|secret| {
        secret.len() == 43
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Serves one request to descriptor route `route`: the request id, the bounds, the
/// deadline, who is calling and their limits, the body, then the call over NATS.
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
    let (_permit, stream_permit) = permits(gw, m)?;
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
    authorize(gw, m, peer, headers, &mut options).await?;
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
    unary(gw, r, request, &options).await
}

/// A slot of the in-flight bound, and for a streaming RPC one of the open streams' bound;
/// 503 when either is full.
fn permits(
    gw: &Gateway,
    m: &MethodInfo,
) -> Result<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>), ApiError> {
    let permit = gw.in_flight.clone().try_acquire_owned().map_err(|_| {
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
    Ok((permit, stream_permit))
}

/// Who is calling, by the RPC's policy (the bearer token's caller and session go into
/// `options`); then their rate limit.
async fn authorize(
    gw: &Gateway,
    m: &MethodInfo,
    peer: SocketAddr,
    headers: &HeaderMap,
    options: &mut CallOptions,
) -> Result<(), ApiError> {
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
    Ok(())
}

/// Calls unary RPC `r` with `request`; the table's say after the call, then the reply as
/// JSON.
async fn unary(
    gw: &Gateway,
    r: &Route,
    request: Bytes,
    options: &CallOptions,
) -> Result<Response, ApiError> {
    let m = r.method;
    let reply = gw.client.unary(m, request, options).await?;
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
