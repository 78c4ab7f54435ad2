//! [`serve`]: puts any generated `XxxServer` on NATS as a micro-protocol
//! service — one endpoint per RPC on `svc.<domain>.v1.<rpc>`, queue group `<domain>` so
//! replicas share load, `$SRV.PING/INFO/STATS` answered per the micro protocol
//! ([`crate::micro`]). Requests run
//! concurrently up to a per-domain bound; each honours the caller's deadline header; a
//! panic is caught and answered as Internal while the service keeps serving; errors go
//! out as micro-protocol error headers plus a `common.Error` body. Streams are sent as
//! messages to the reply inbox closed by an end marker (or, when the service stops
//! mid-stream, by an Unavailable error, so shutdown never waits on a long stream). It
//! does not decide placement or connect to NATS: the appliance hands it a connected client.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aicore_proto::{Caller, Code, Dispatch, Metadata, Reply, Request, Status};
use aicore_sdk::header_names;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::micro;
use crate::trace::{self, TraceParent};

/// The NATS account external principals (game servers) connect to, apart from the
/// appliance's own account. It imports the services they may call with `share`, so
/// nats-server stamps every request crossing over with the sender's account and its
/// certificate-mapped user ([`aicore_proto::headers::REQUEST_INFO`]), replacing anything
/// the sender put there: a domain knows which principal sent a request and the principal
/// cannot say otherwise. (One account for all of them, present from the start, because
/// nats-server does not wire the imports of an account added by a configuration reload.)
pub const EXTERNAL_ACCOUNT: &str = "EXTERNAL";

/// Who may act for whom over NATS.
///
/// Requests without a `Nats-Request-Info` stamp come from the appliance's own account
/// (the domains, the gateway, the admin CLI): trusted principals whose `Aicore-Caller`
/// headers are taken as they are (the gateway sets them only from a validated token).
/// Requests stamped with an external principal's account may act for any end user but
/// only with roles within that principal's ceiling; without a caller header they act as
/// the principal itself (`principal:<name>`) holding its ceiling's roles.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The roles an external principal may claim when it has no entry in `ceilings`.
    pub default_ceiling: Vec<String>,
    /// Per external principal (certificate name): the roles it may claim.
    pub ceilings: std::collections::HashMap<String, Vec<String>>,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            default_ceiling: vec!["player".to_string()],
            ceilings: Default::default(),
        }
    }
}

impl Trust {
    /// The roles external principal `name` may claim.
    pub fn ceiling(&self, name: &str) -> &[String] {
        self.ceilings
            .get(name)
            .unwrap_or(&self.default_ceiling)
            .as_slice()
    }

    /// The caller a request from external principal `principal` acts as, given the
    /// caller it claimed; PermissionDenied when it claims a role beyond its ceiling.
    fn bound(&self, principal: &str, claimed: Option<Caller>) -> Result<Caller, Status> {
        let ceiling = self.ceiling(principal);
        match claimed {
            Some(c) => match c.roles.iter().find(|r| !ceiling.contains(r)) {
                Some(role) => Err(Status::new(
                    Code::PermissionDenied,
                    format!(
                        "principal {principal:?} may not act with role {role:?} (its ceiling is {ceiling:?})"
                    ),
                )),
                None => Ok(c),
            },
            None => Ok(Caller {
                account_id: format!("principal:{principal}"),
                roles: ceiling.to_vec(),
            }),
        }
    }
}

/// How often a quiet stream says it is alive ([`aicore_proto::headers::STREAM`]
/// `heartbeat`). nats-server forgets a streamed reply's route across accounts two
/// minutes (its default response threshold) after the last message, so a quiet watch by
/// a game server would go silently dead without one; clients can also tell a dead stream
/// from a quiet one.
pub const STREAM_HEARTBEAT: Duration = Duration::from_secs(30);

/// Tunables of one served domain.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Requests of this domain handled at once; more wait in the subscription.
    pub max_in_flight: usize,
    /// Version announced in `$SRV.INFO`.
    pub version: String,
    /// Who may act for whom.
    pub trust: Arc<Trust>,
    /// How often a quiet stream sends a heartbeat.
    pub stream_heartbeat: Duration,
    /// The store the domain writes to: `$SRV.PING` and `$SRV.INFO` say in their
    /// metadata whether it takes writes (`aicore status` and `/readyz` show it).
    pub store: Option<crate::Store>,
    /// Where the domain's per-RPC counters and latency histograms go (none: not kept).
    pub metrics: Option<Arc<crate::metrics::Registry>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_in_flight: 256,
            version: env!("CARGO_PKG_VERSION").to_string(),
            trust: Arc::default(),
            stream_heartbeat: STREAM_HEARTBEAT,
            store: None,
            metrics: None,
        }
    }
}

/// A domain being served; [`ServiceHandle::stop`] drains it.
pub struct ServiceHandle {
    domain: &'static str,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    liveness: Liveness,
}

/// How often a domain's request loop marks itself alive when no request wakes it.
pub const LOOP_TURN: Duration = Duration::from_secs(1);

/// What a health loop needs to tell a live domain instance from a wedged one: its micro
/// instance id (to ask this instance, not any replica on the NATS network, for a ping)
/// and when its request loop last turned.
#[derive(Clone)]
pub struct Liveness {
    /// The domain.
    pub domain: &'static str,
    /// Its micro instance id: `$SRV.PING.<domain>.<id>` reaches this instance only.
    pub id: String,
    /// Milliseconds since `since` at the loop's last turn.
    turned: Arc<AtomicU64>,
    since: Instant,
}

impl Liveness {
    /// How long ago the request loop last turned (at least every [`LOOP_TURN`] while it
    /// runs; a loop stuck in a handler or stopped stops turning).
    pub fn since_last_turn(&self) -> Duration {
        let at = Duration::from_millis(self.turned.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(at)
    }

    fn turn(&self) {
        let now = self.since.elapsed().as_millis();
        self.turned
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl ServiceHandle {
    /// The domain served.
    pub fn domain(&self) -> &'static str {
        self.domain
    }

    /// This instance's liveness, for a health loop.
    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
    }

    /// Stops taking requests and waits for the ones in flight to finish.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Serves `dispatch` on NATS until `shutdown` (or [`ServiceHandle::stop`]).
pub async fn serve(
    nats: async_nats::Client,
    dispatch: Arc<dyn Dispatch>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<ServiceHandle, Status> {
    let info = dispatch.service();
    let unavailable = |what: String| Status::new(Code::Unavailable, what);
    let mut endpoints = Vec::with_capacity(info.methods.len());
    for (i, m) in info.methods.iter().enumerate() {
        let sub = nats
            .queue_subscribe(m.subject, info.domain.to_string())
            .await
            .map_err(|e| unavailable(format!("cannot subscribe to {}: {e}", m.subject)))?;
        endpoints.push(sub.map(move |r| (i, r)).boxed());
    }
    let service = Arc::new(micro::Service::with_store(
        options.store.clone(),
        info.domain,
        options.version.clone(),
        info.description,
        info.methods
            .iter()
            .map(|m| micro::Endpoint {
                name: m.rpc,
                subject: m.subject,
                stats: Default::default(),
            })
            .collect(),
    ));
    let cancel = shutdown.child_token();
    let discovery = micro::serve_discovery(nats.clone(), service.clone(), cancel.clone())
        .await
        .map_err(|e| unavailable(format!("cannot start {}: {e}", info.domain)))?;
    // Streams callers abandoned: every replica hears the cancel of a stream; the one
    // running it stops it (see `Streams`).
    let streams = Streams::default();
    for m in info.methods.iter().filter(|m| m.server_streaming) {
        let subject = aicore_proto::stream_cancel_subject(m.subject);
        let mut sub = nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| unavailable(format!("cannot subscribe to {subject}: {e}")))?;
        let (streams, stop) = (streams.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = sub.next() => match m {
                        Some(m) => {
                            if let Some(id) = m.headers.as_ref().and_then(|h| h.get(header_names::STREAM_ID)) {
                                streams.cancel(id.as_str());
                            }
                        }
                        None => return,
                    },
                }
            }
        });
    }
    let mut requests = futures::stream::select_all(endpoints);
    let limit = options.max_in_flight.max(1);
    let served = Arc::new(AtomicU64::new(0));
    let stop = cancel.clone();
    let rpc_metrics = options.metrics.as_ref().map(|m| m.rpc(info));
    let options = Arc::new(options);
    let liveness = Liveness {
        domain: info.domain,
        id: service.id.clone(),
        turned: Arc::new(AtomicU64::new(0)),
        since: Instant::now(),
    };
    let alive = liveness.clone();
    let task = tokio::spawn(async move {
        // Requests run concurrently as futures of this one task (no task spawned per
        // request: measured, spawning plus a semaphore cost a fifth of the throughput of a
        // trivial handler). At most `limit` are in flight; past that, requests wait in the
        // subscription until one finishes. Handlers that burn CPU or block must move that
        // work off the task (argon2 runs on the blocking pool; store writes on the writer
        // thread).
        let mut in_flight = FuturesUnordered::new();
        let mut turns = tokio::time::interval(LOOP_TURN);
        turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = turns.tick() => alive.turn(),
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                r = requests.next(), if in_flight.len() < limit => match r {
                    Some((method, request)) => {
                        served.fetch_add(1, Ordering::Relaxed);
                        let record = Record { stats: &service.endpoints[method].stats, rpc: rpc_metrics.as_deref(), method };
                        in_flight.push(handle(&*dispatch, &nats, record, &options, &stop, &streams, method, request));
                    }
                    None => break,
                },
            }
        }
        // Stop taking requests (dropping the subscriptions unsubscribes them), then
        // finish every in-flight one.
        drop(requests);
        while in_flight.next().await.is_some() {}
        // The subscriptions may also have ended on their own (the connection closed).
        stop.cancel();
        let _ = discovery.await;
        tracing::info!(
            domain = info.domain,
            served = served.load(Ordering::Relaxed),
            "domain stopped"
        );
    });
    Ok(ServiceHandle {
        domain: info.domain,
        cancel,
        task,
        liveness,
    })
}

/// The streams running on this replica that their callers may cancel, by the id the
/// caller gave ([`aicore_proto::headers::STREAM_ID`]). A cancel for an id not here (another
/// replica's stream, one already ended) is ignored. The ids are random and travel only in
/// the request's headers, so one caller cannot guess another's.
#[derive(Clone, Default)]
struct Streams(Arc<std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>>);

/// Longest stream id read.
const MAX_STREAM_ID: usize = 64;

impl Streams {
    /// Registers stream `id`; the token is cancelled when its caller cancels, and the
    /// entry goes when the guard drops.
    fn register(&self, id: String) -> Option<(CancellationToken, StreamEntry)> {
        if id.is_empty() || id.len() > MAX_STREAM_ID {
            return None;
        }
        let token = CancellationToken::new();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&id) {
            return None;
        }
        map.insert(id.clone(), token.clone());
        Some((
            token,
            StreamEntry {
                streams: self.clone(),
                id,
            },
        ))
    }

    fn cancel(&self, id: &str) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(id) {
            t.cancel();
        }
    }
}

/// Removes a stream from [`Streams`] when it ends, however it ends.
struct StreamEntry {
    streams: Streams,
    id: String,
}

impl Drop for StreamEntry {
    fn drop(&mut self) {
        let mut map = self.streams.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.id);
    }
}

/// Longest `Aicore-Client-Addr` value read; an IPv6 address with a zone fits.
const MAX_CLIENT_ADDR: usize = 64;
/// Longest `Aicore-Caller-Session` value read (auth's session ids are 36 characters).
const MAX_CALLER_SESSION: usize = 64;

/// The client address header's value as a canonical IP address, or `None` when it is not
/// one (too long, or not an address): a bad value is ignored, never trusted as a name.
fn client_addr(v: Option<String>) -> Option<String> {
    let v = v.filter(|v| v.len() <= MAX_CLIENT_ADDR)?;
    let ip: std::net::IpAddr = v.trim().parse().ok()?;
    Some(ip.to_canonical().to_string())
}

/// Reads deadline, caller, trace, request id and client address from the request
/// headers, and bounds the caller by [`Trust`] when nats-server says the request came
/// from an external principal.
fn metadata(h: Option<&HeaderMap>, received: Instant, trust: &Trust) -> Result<Metadata, Status> {
    let get =
        |name: async_nats::HeaderName| h.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
    // The caller's remaining time counts from pick-up; its absolute deadline also counts
    // the time the request waited in the queue. The earlier of the two wins.
    let relative = get(header_names::TIMEOUT_MS)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| received + Duration::from_millis(ms));
    let absolute = get(header_names::DEADLINE)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            match at.duration_since(SystemTime::now()) {
                Ok(left) => received + left,
                Err(_) => received,
            }
        });
    let deadline = match (relative, absolute) {
        (Some(r), Some(a)) => Some(r.min(a)),
        (r, a) => r.or(a),
    };
    let caller = get(header_names::CALLER)
        .filter(|c| !c.is_empty())
        .map(|account_id| Caller {
            account_id,
            roles: get(header_names::CALLER_ROLES)
                .map(|r| {
                    r.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        });
    let (caller, principal) = match get(header_names::REQUEST_INFO) {
        None => (caller, None),
        Some(info) => {
            let principal = external_principal(&info)?;
            (Some(trust.bound(&principal, caller)?), Some(principal))
        }
    };
    // A session only means something with the caller it belongs to.
    let caller_session = get(header_names::CALLER_SESSION).filter(|s| {
        caller.is_some()
            && !s.is_empty()
            && s.len() <= MAX_CALLER_SESSION
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    Ok(Metadata {
        deadline,
        caller,
        caller_session,
        principal,
        traceparent: get(header_names::TRACEPARENT),
        request_id: get(header_names::REQUEST_ID),
        client_addr: client_addr(get(header_names::CLIENT_ADDR)),
    })
}

/// The external principal named by a `Nats-Request-Info` stamp: the certificate name
/// (`CN`) of the user nats-server mapped the sender's certificate to. PermissionDenied for
/// any other account or user (nothing else imports our services).
fn external_principal(info: &str) -> Result<String, Status> {
    let v = serde_json::from_str::<serde_json::Value>(info).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
    let (account, user) = (field("acc"), field("user"));
    let name = (account == EXTERNAL_ACCOUNT)
        .then(|| principal_of_user(user))
        .flatten();
    name.map(str::to_string).ok_or_else(|| {
        Status::new(
            Code::PermissionDenied,
            format!("requests from NATS account {account:?} user {user:?} are not accepted"),
        )
    })
}

/// The principal name of a certificate-mapped NATS user (`CN=<name>,OU=<role>,O=AI Core`)
/// of an external role.
fn principal_of_user(user: &str) -> Option<&str> {
    let mut name = None;
    let mut external = false;
    for part in user.split(',') {
        match part.split_once('=') {
            Some(("CN", n)) if !n.is_empty() => name = Some(n),
            Some(("OU", "game-server")) => external = true,
            _ => {}
        }
    }
    name.filter(|_| external)
}

#[allow(clippy::too_many_arguments)] // one request's whole context, passed down from `serve`
async fn handle(
    dispatch: &dyn Dispatch,
    nats: &async_nats::Client,
    record: Record<'_>,
    options: &ServeOptions,
    stop: &CancellationToken,
    streams: &Streams,
    method: usize,
    request: async_nats::Message,
) {
    let info = &dispatch.service().methods[method];
    // A stream its caller can cancel: the work stops when the caller says it went away.
    let cancellable = info
        .server_streaming
        .then(|| {
            let id = request.headers.as_ref()?.get(header_names::STREAM_ID)?;
            streams.register(id.as_str().to_string())
        })
        .flatten();
    let (abandoned, _entry) = match cancellable {
        Some((token, entry)) => (token, Some(entry)),
        None => (CancellationToken::new(), None),
    };
    let received = Instant::now();
    let stats = &record;
    // Who is calling, bounded by what its principal may claim, then the RPC's policy:
    // one check for every caller, whatever the transport, before the handler runs.
    let meta = metadata(request.headers.as_ref(), received, &options.trust)
        .and_then(|meta| info.policy.permits(meta.caller.as_ref()).map(|()| meta));
    let meta = match meta {
        Ok(meta) => meta,
        Err(s) => {
            if let Some(reply) = &request.reply {
                respond_error(nats, reply, stats, received, &s).await;
            }
            return;
        }
    };
    // This request's own span, a child of the caller's; the handler's calls and the
    // events its writes queue are children of it.
    let mut meta = meta;
    let (context, parent) = TraceParent::continuing(meta.traceparent.as_deref());
    meta.traceparent = Some(context.to_string());
    let mut finished = Finished::start(context, parent, info.subject);
    let span = tracing::info_span!(
        "rpc",
        subject = info.subject,
        request_id = meta.request_id.as_deref().unwrap_or(""),
        trace_id = %format_args!("{:032x}", context.trace_id),
    );
    let served = async move {
        let body = request.payload.clone();
        let outcome = run_handler(dispatch, method, info.subject, Request { body, meta }).await;
        if abandoned.is_cancelled() {
            tracing::debug!(subject = info.subject, "the caller abandoned the stream");
            finished.abandoned();
            return;
        }
        if let Err(s) = &outcome {
            finished.fail(s);
        }
        match outcome {
            Ok(Reply::Unary(body)) => {
                if let Some(reply) = &request.reply
                    && let Err(e) = nats.publish(reply.clone(), body).await
                {
                    tracing::warn!(error = %e, "reply not sent");
                }
                stats.ok(received.elapsed());
            }
            Ok(Reply::Stream(items)) => {
                let Some(reply) = request.reply.clone() else {
                    return;
                };
                let out = StreamOut {
                    nats,
                    reply,
                    stats,
                    received,
                    subject: info.subject,
                };
                let ends = (&abandoned, stop);
                send_stream(out, items, ends, options.stream_heartbeat, &mut finished).await;
            }
            Err(s) => {
                if let Some(reply) = &request.reply {
                    respond_error(nats, reply, stats, received, &s).await;
                }
            }
        }
    };
    trace::scope(context, served.instrument(span)).await
}

/// Runs the handler within the request's deadline (one already past is not started); a
/// panic is answered Internal.
async fn run_handler(
    dispatch: &dyn Dispatch,
    method: usize,
    subject: &'static str,
    request: Request<Bytes>,
) -> Result<Reply, Status> {
    let deadline = request.meta.deadline;
    let call = AssertUnwindSafe(dispatch.call(method, request)).catch_unwind();
    match deadline {
        Some(d) if d <= Instant::now() => Err(Status::new(
            Code::DeadlineExceeded,
            "the request's deadline passed before it was handled",
        )),
        Some(d) => match tokio::time::timeout_at(d.into(), call).await {
            Ok(r) => flatten_panic(r),
            Err(_) => Err(Status::new(
                Code::DeadlineExceeded,
                format!("{subject} did not finish within the request's deadline"),
            )),
        },
        None => flatten_panic(call.await),
    }
}

/// Where a stream's messages go, and what they are counted in.
struct StreamOut<'a> {
    nats: &'a async_nats::Client,
    reply: async_nats::Subject,
    stats: &'a Record<'a>,
    received: Instant,
    subject: &'static str,
}

/// Sends a stream's items, heartbeats while it is quiet, then the end marker. It stops
/// when the caller abandons it (`ends.0`: nobody is left to tell; dropping `items` stops
/// the work behind it) and at shutdown (`ends.1`), which must not wait for a stream that
/// may run for hours: that ends it with Unavailable, not the end marker, so the client
/// can tell it was cut and resume. Its latency is how long it took to start.
async fn send_stream(
    out: StreamOut<'_>,
    mut items: futures::stream::BoxStream<'static, Result<Bytes, Status>>,
    (abandoned, stop): (&CancellationToken, &CancellationToken),
    heartbeat: Duration,
    finished: &mut Finished,
) {
    let StreamOut {
        nats,
        reply,
        stats,
        received,
        subject,
    } = out;
    let started = received.elapsed();
    let every = heartbeat.max(Duration::from_millis(10));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let item = tokio::select! {
            biased;
            _ = abandoned.cancelled() => {
                tracing::debug!(subject, "the caller abandoned the stream");
                finished.abandoned();
                return;
            }
            _ = stop.cancelled() => {
                let s = Status::new(Code::Unavailable, "the service is shutting down; resume the stream");
                finished.fail(&s);
                respond_error(nats, &reply, stats, received, &s).await;
                return;
            }
            item = items.next() => match item { Some(i) => i, None => break },
            _ = beat.tick() => {
                let mut h = HeaderMap::new();
                h.insert(header_names::STREAM, "heartbeat");
                if nats.publish_with_headers(reply.clone(), h, Bytes::new()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        beat.reset();
        match item {
            Ok(b) => {
                if nats.publish(reply.clone(), b).await.is_err() {
                    return;
                }
            }
            Err(s) => {
                finished.fail(&s);
                respond_error(nats, &reply, stats, received, &s).await;
                return;
            }
        }
    }
    let mut h = HeaderMap::new();
    h.insert(header_names::STREAM, "end");
    let _ = nats.publish_with_headers(reply, h, Bytes::new()).await;
    stats.stream_ended(received.elapsed(), started);
}

/// A served request's span, recorded when the request is done (whichever way it ends);
/// nothing when no trace sink is installed.
struct Finished {
    span: Option<trace::Span>,
}

impl Finished {
    fn start(context: TraceParent, parent: Option<u64>, subject: &'static str) -> Finished {
        let span = context.recorded().then(|| {
            let mut parts = subject.split('.');
            let domain = parts.nth(1).unwrap_or_default();
            let rpc = parts.nth(1).unwrap_or_default();
            let now = SystemTime::now();
            trace::Span {
                context,
                parent,
                name: subject.into(),
                kind: trace::Kind::Server,
                start: now,
                end: now,
                error: None,
                attributes: vec![
                    ("rpc.system", "nats".into()),
                    ("rpc.service", domain.into()),
                    ("rpc.method", rpc.into()),
                ],
            }
        });
        Finished { span }
    }

    fn fail(&mut self, status: &Status) {
        if let Some(span) = &mut self.span {
            span.error = Some((status.code.as_str_name(), status.message.clone()));
        }
    }

    fn abandoned(&mut self) {
        if let Some(span) = &mut self.span {
            span.error = Some(("CANCELLED", "the caller went away".into()));
        }
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end = SystemTime::now();
            let code = span.error.as_ref().map_or("OK", |e| e.0);
            span.attributes.push(("rpc.status", code.into()));
            trace::record(span);
        }
    }
}

fn flatten_panic(
    r: Result<Result<Reply, Status>, Box<dyn std::any::Any + Send>>,
) -> Result<Reply, Status> {
    match r {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "handler panicked; answered as Internal");
            Err(Status::internal("internal error"))
        }
    }
}

/// Where one request's outcome is counted: the micro protocol's endpoint stats
/// (`$SRV.STATS`) and the Prometheus rows ([`crate::metrics`]).
struct Record<'a> {
    stats: &'a micro::EndpointStats,
    rpc: Option<&'a crate::metrics::RpcMetrics>,
    method: usize,
}

impl Record<'_> {
    fn ok(&self, elapsed: Duration) {
        self.stream_ended(elapsed, elapsed)
    }

    /// A call answered in full after `elapsed`; its latency is `started` (the time a
    /// stream took to start, the whole call for a unary one).
    fn stream_ended(&self, elapsed: Duration, started: Duration) {
        self.stats.record(elapsed);
        if let Some(rpc) = self.rpc {
            rpc.record(self.method, Ok(()), started);
        }
    }

    fn error(&self, elapsed: Duration, status: &Status) {
        self.stats.error(elapsed, status.to_string());
        if let Some(rpc) = self.rpc {
            rpc.record(self.method, Err(status.code), elapsed);
        }
    }
}

async fn respond_error(
    nats: &async_nats::Client,
    reply: &async_nats::Subject,
    stats: &Record<'_>,
    received: Instant,
    status: &Status,
) {
    if status.code == Code::Internal {
        tracing::error!(error = %status, "request failed");
    } else {
        tracing::debug!(error = %status, "request refused");
    }
    stats.error(received.elapsed(), status);
    let mut h = HeaderMap::new();
    // Header values must stay on one line.
    let msg: String = status
        .message
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    h.insert(header_names::SERVICE_ERROR, msg.as_str());
    h.insert(
        header_names::SERVICE_ERROR_CODE,
        status.http_status().to_string().as_str(),
    );
    let body = Bytes::from(status.to_proto().encode_to_vec());
    if let Err(e) = nats.publish_with_headers(reply.clone(), h, body).await {
        tracing::warn!(error = %e, "error reply not sent");
    }
}

#[cfg(test)]
mod tests;
