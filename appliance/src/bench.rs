//! `aicore bench`: throughput and latency of the appliance's request paths, each reported
//! as a ratio of a raw baseline measured in the same run on the same nats-server. A row
//! and the raw baseline take turns, about a second each, for the row's whole time, and
//! the ratio is to the raw slices between the row's own (the "raw req/s" column), so the
//! numbers mean something on a shared, noisy machine. It starts its own nats-server child
//! and store in a temporary directory and serves state-manager in-process on its own NATS
//! connection (as `aicore run` does); load comes from separate connections.
//!
//! Rows: raw async-nats request/reply echo; the same over mutual TLS with the default
//! least-privilege users (a second nats-server, so TLS vs `--insecure-dev` in one run); over HTTP from an in-process hyper client, a
//! bare axum→NATS forwarder of a JSON body to an echo responder and the gateway (bearer
//! auth from a real auth domain, rate limit, in-flight bound, JSON ↔ protobuf, metrics)
//! calling a stub state_manager.get responder, same JSON body, with the gateway's share of
//! the forwarder printed per concurrency; SDK state-manager Get of a cached object;
//! SDK state-manager Put (durable, group commit); SDK payment Transfer (durable, group
//! commit, contended: random pairs of a few wallets, a fresh idempotency key per call); SDK
//! world-state Get of a cached fact; the same state-manager Put with group commit off (one
//! durable commit per request) as the store's own baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use aicore_domains::registry;
use aicore_proto::CallOptions;
use aicore_proto::aicore::auth::v1::{AuthClient, RegisterRequest};
use aicore_proto::aicore::payment::v1::{CreditRequest, PaymentClient, TransferRequest};
use aicore_proto::aicore::state_manager::v1::{GetRequest, PutRequest, StateManagerClient};
use aicore_runtime::serve::{self, ServeOptions};
use aicore_runtime::store::{Store, StoreOptions};
use aicore_runtime::{Ctx, SystemClock};

use crate::certs::Authority;
use crate::config::Config;
use crate::nats_child::{NatsChild, NatsChildConfig, resolve_binary};
use crate::security::{self, ClientTls};
use crate::supervisor::connect;

/// Retries `call` while it fails, for up to 10 s: a service just started on one
/// connection is not always reachable from another at once.
async fn ready<F, Fut>(what: &str, mut call: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
    Fut::Output: Outcome,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await.error() {
            None => return Ok(()),
            Some(e) if Instant::now() >= deadline => anyhow::bail!("{what}: {e}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The raw baseline's row name.
const RAW: &str = "raw request/reply";
/// The raw baseline on the TLS server measured against the plaintext one.
const RAW_TLS: &str = "raw request/reply, mTLS vs plaintext";

/// The runtime-echo service: one RPC answering its request body.
static ECHO_METHODS: &[aicore_proto::MethodInfo] = &[aicore_proto::MethodInfo {
    domain: "bench_echo",
    service: "aicore.bench_echo.v1.BenchEcho",
    name: "Echo",
    rpc: "echo",
    subject: "svc.bench_echo.v1.echo",
    input: "",
    output: "",
    server_streaming: false,
    idempotency_key: 0,
    policy: aicore_proto::Policy {
        access: aicore_proto::Access::Public,
        roles: &[],
        read_only: false,
        default_deadline_ms: 0,
    },
}];

static ECHO_SERVICE: aicore_proto::ServiceInfo = aicore_proto::ServiceInfo {
    domain: "bench_echo",
    name: "BenchEcho",
    full_name: "aicore.bench_echo.v1.BenchEcho",
    description: "aicore bench: echoes its request",
    methods: ECHO_METHODS,
};

struct EchoService;

impl aicore_proto::Dispatch for EchoService {
    fn service(&self) -> &'static aicore_proto::ServiceInfo {
        &ECHO_SERVICE
    }
    fn call(
        &self,
        _method: usize,
        request: aicore_proto::Request<Bytes>,
    ) -> futures::future::BoxFuture<'static, Result<aicore_proto::Reply, aicore_proto::Status>>
    {
        Box::pin(async move { Ok(aicore_proto::Reply::Unary(request.body)) })
    }
}

/// Options of `aicore bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Seconds each cell of the table runs.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Concurrency levels (in-flight requests).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,128")]
    pub concurrency: Vec<usize>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Row groups to run (the raw baseline always runs): runtime, http, state
    /// (state-manager get/put, and put without the write-ahead log), payment, world,
    /// single (one durable commit per request).
    /// Empty runs them all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Also run every row on a plaintext nats-server with no users (what
    /// `--insecure-dev` runs), for the comparison columns; `--plaintext false` skips it
    /// (half the time).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub plaintext: bool,
}

impl BenchArgs {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

/// One measured cell.
struct Cell {
    name: &'static str,
    concurrency: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// The first error seen, printed under the table.
    first_error: Option<String>,
    /// The raw baseline's req/s in the slices interleaved with this cell's (none for the
    /// raw rows themselves).
    raw_rps: Option<f64>,
}

/// What one measured call came to: `None` if it succeeded, else what went wrong.
trait Outcome {
    fn error(self) -> Option<String>;
}

impl Outcome for bool {
    fn error(self) -> Option<String> {
        (!self).then(|| "failed".to_string())
    }
}

impl Outcome for Option<String> {
    fn error(self) -> Option<String> {
        self
    }
}

impl<T, E: std::fmt::Display> Outcome for Result<T, E> {
    fn error(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// A load: one call by worker `w`, its `i`-th (counted over all of a cell's slices, so
/// keys derived from `i`, such as idempotency keys, never repeat within a cell).
type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, Option<String>> + Send + Sync>;

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Outcome,
{
    Arc::new(move |w, i| {
        let call = f(w, i);
        Box::pin(async move { call.await.error() })
    })
}

/// The raw request/reply echo every other row is interleaved with.
#[derive(Clone)]
struct Baseline {
    nats: async_nats::Client,
    payload: Bytes,
}

impl Baseline {
    fn op(&self) -> Op {
        request_op(&self.nats, ECHO_SUBJECT, &self.payload)
    }
}

/// One of the two nats-servers every row runs on: the default configuration (mutual TLS,
/// pinned certificates, accounts, least-privilege users: what `aicore run` runs) or
/// plaintext with no users (what `--insecure-dev` runs). Every connection of a row
/// presents the identity `aicore run` would: domains serve as `domains`, loads call as
/// `gateway`.
#[derive(Clone)]
struct Env {
    /// `mTLS` or `plaintext`.
    label: &'static str,
    url: String,
    /// The certificate directory, on the TLS server.
    certs: Option<std::path::PathBuf>,
}

impl Env {
    /// The identity of `principal` on this server (none in plaintext).
    fn tls(&self, principal: &str) -> Option<ClientTls> {
        self.certs.as_ref().map(|d| ClientTls::in_dir(d, principal))
    }

    /// A connection as `principal`.
    async fn connect(&self, principal: &str, name: &str) -> Result<async_nats::Client> {
        connect(&self.url, self.tls(principal).as_ref(), principal, name).await
    }
}

/// The raw request/reply subject: under `svc.`, so the `domains` identity may serve it
/// and the `gateway` identity call it on the TLS server.
const ECHO_SUBJECT: &str = "svc.bench.v1.echo";

/// Starts the raw baseline on `env`: an echo responder on its own connection (as
/// `domains`, handling in order) and the load connection (as `gateway`).
async fn baseline(env: &Env, payload: &Bytes) -> Result<(Baseline, tokio::task::JoinHandle<()>)> {
    let responder = env.connect("domains", "bench-echo").await?;
    let mut sub = responder
        .queue_subscribe(ECHO_SUBJECT, "bench".into())
        .await?;
    let echo_nats = responder.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = echo_nats.publish(reply, m.payload).await;
            }
        }
    });
    responder.flush().await?;
    let load = env.connect("gateway", "bench-load").await?;
    let base = Baseline {
        nats: load,
        payload: payload.clone(),
    };
    ready("the raw echo", || base.op()(0, 0)).await?;
    Ok((base, echo))
}

/// A load of plain NATS requests of `payload` to `subject`.
fn request_op(nats: &async_nats::Client, subject: &'static str, payload: &Bytes) -> Op {
    let (nats, payload) = (nats.clone(), payload.clone());
    op(move |_, _| {
        let (nats, p) = (nats.clone(), payload.clone());
        async move { nats.request(subject, p).await.map(|_| ()) }
    })
}

/// The calls of one load over one or more slices of time.
#[derive(Default)]
struct Samples {
    /// Latency of each successful call.
    lat: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    /// Measured time (warm-ups excluded).
    seconds: f64,
}

impl Samples {
    fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            // Successful calls only: a failing path must not look fast.
            self.lat.len() as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn into_cell(mut self, name: &'static str, concurrency: usize, raw_rps: Option<f64>) -> Cell {
        self.lat.sort_unstable();
        let pct = |p: f64| {
            self.lat
                .get(((self.lat.len() as f64 * p) as usize).min(self.lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Cell {
            name,
            concurrency,
            rps: self.rps(),
            p50: pct(0.50),
            p99: pct(0.99),
            errors: self.errors,
            first_error: self.first_error,
            raw_rps,
        }
    }
}

/// Runs `op` from `concurrency` tasks for a warm-up of a tenth of `seconds` (not
/// counted) and then `seconds`, adding each call to `into`. `next` holds each worker's
/// next call number. With `store`, a flush the slice's writes left running is waited
/// for and its time counted as the slice's: work a load deferred must not land in the
/// next load's slice.
async fn slice(
    concurrency: usize,
    seconds: f64,
    op: &Op,
    next: &Arc<Vec<AtomicU64>>,
    store: Option<&Store>,
    into: &mut Samples,
) {
    let warm = Instant::now() + Duration::from_secs_f64(seconds / 10.0);
    let end = warm + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut part = Samples::default();
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let i = next[worker].fetch_add(1, Ordering::Relaxed);
                let outcome = op(worker, i).await;
                if start >= warm {
                    match outcome {
                        None => part.lat.push(start.elapsed()),
                        Some(e) => {
                            part.errors += 1;
                            part.first_error.get_or_insert(e);
                        }
                    }
                }
            }
            part
        }));
    }
    for t in tasks {
        if let Ok(part) = t.await {
            into.lat.extend(part.lat);
            into.errors += part.errors;
            into.first_error = into.first_error.take().or(part.first_error);
        }
    }
    into.seconds += seconds;
    if let Some(store) = store {
        let flushing = Instant::now();
        while store.flushing() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        into.seconds += flushing.elapsed().as_secs_f64();
    }
}

/// Slices a cell's time is cut into: about one a second. The loads of a cell take
/// turns, slice by slice, so they see the same machine: on a shared machine the raw
/// baseline alone moved by a factor of two between cells of one run (BENCHMARKS.md),
/// and a ratio to a raw row measured minutes earlier moved with it.
fn slices(seconds: f64) -> usize {
    (seconds.round() as usize).max(1)
}

/// Measures `loads` at `concurrency` for `seconds` each in `n` slices, taking turns
/// slice by slice; the loads after the first are charged for the flushes of `store`
/// they leave running.
async fn interleaved(
    concurrency: usize,
    seconds: f64,
    n: usize,
    loads: &[Op],
    store: Option<&Store>,
) -> Vec<Samples> {
    let n = n.max(1);
    let next: Vec<Arc<Vec<AtomicU64>>> = loads
        .iter()
        .map(|_| Arc::new((0..concurrency).map(|_| AtomicU64::new(0)).collect()))
        .collect();
    let mut out: Vec<Samples> = loads.iter().map(|_| Samples::default()).collect();
    for _ in 0..n {
        let turns = loads.iter().zip(&next).zip(out.iter_mut());
        for (i, ((load, next), into)) in turns.enumerate() {
            let store = store.filter(|_| i > 0);
            slice(concurrency, seconds / n as f64, load, next, store, into).await;
        }
    }
    out
}

/// Measures the paths `rows` interleaved with the raw baseline (slice by slice, raw
/// first); each cell's ratio is to the raw slices between its own. `store`: the store
/// the rows write to, if any.
async fn measure_rows(
    base: &Baseline,
    store: Option<&Store>,
    concurrency: usize,
    seconds: f64,
    rows: Vec<(&'static str, Op)>,
) -> Vec<Cell> {
    let mut loads = vec![base.op()];
    loads.extend(rows.iter().map(|(_, o)| o.clone()));
    let mut samples = interleaved(concurrency, seconds, slices(seconds), &loads, store)
        .await
        .into_iter();
    let raw = samples.next().map(|s| s.rps());
    rows.iter()
        .zip(samples)
        .map(|((name, _), s)| s.into_cell(name, concurrency, raw))
        .collect()
}

/// Measures one path interleaved with the raw baseline.
async fn measure<F, Fut>(
    base: &Baseline,
    store: Option<&Store>,
    name: &'static str,
    concurrency: usize,
    seconds: f64,
    f: F,
) -> Cell
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Outcome,
{
    let mut cells = measure_rows(base, store, concurrency, seconds, vec![(name, op(f))]).await;
    cells.remove(0)
}

/// The raw baseline on the TLS server interleaved with the plaintext one, slice by slice:
/// the cost of TLS and permission checks on a bare request/reply, and the link between
/// the two runs' ratios (see [`print_table`]).
async fn raw_tls_vs_plaintext(tls: &Baseline, plain: &Baseline, args: &BenchArgs) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &c in &args.concurrency {
        cells.extend(measure_rows(plain, None, c, args.seconds, vec![(RAW_TLS, tls.op())]).await);
    }
    cells
}

/// Serves domain `name` (as registered) on its own connection over `store`.
async fn serve_domain(
    env: &Env,
    name: &str,
    store: Store,
    config: &Config,
    stop: CancellationToken,
) -> Result<serve::ServiceHandle> {
    let nats = env.connect("domains", "bench-domains").await?;
    let ctx = Ctx {
        store,
        clock: Arc::new(SystemClock),
        client: Some(aicore_sdk::Client::new(nats.clone(), Default::default())),
        shutdown: stop.child_token(),
    };
    let spec = registry::find(name).with_context(|| format!("{name} is not registered"))?;
    let dispatch = (spec.build)(&ctx, &config.domains).map_err(|e| anyhow::anyhow!("{e}"))?;
    let handle = serve::serve(nats.clone(), dispatch, ServeOptions::default(), stop)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    nats.flush().await?;
    Ok(handle)
}

/// Wallets the payment.transfer row moves money between: few, so transfers contend.
const BENCH_WALLETS: usize = 8;

/// Serves payment over `store`, funds the bench wallets, and measures Transfer between
/// random pairs of them (a fresh idempotency key per call) at every concurrency level.
async fn measure_transfers(
    env: &Env,
    store: Store,
    config: &Config,
    base: &Baseline,
    args: &BenchArgs,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    let load = &base.nats;
    let serving = serve_domain(env, "payment", store.clone(), config, stop.clone()).await?;
    // Payment pays only accounts that exist: auth serves on the same store and the
    // wallets' owners are registered (payment remembers them, so the measured transfers
    // do not ask auth).
    let auth_serving = serve_domain(env, "auth", store.clone(), config, stop).await?;
    let sdk = aicore_sdk::Client::new(load.clone(), Default::default());
    let auth = AuthClient::new(sdk.clone());
    let mut wallets = Vec::with_capacity(BENCH_WALLETS);
    for w in 0..BENCH_WALLETS {
        let r = auth
            .register(
                RegisterRequest {
                    username: format!("bench-wallet-{w}"),
                    password: "bench-wallet-passphrase".into(),
                    display_name: String::new(),
                },
                &CallOptions::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("registering the bench wallets' owners: {e}"))?;
        wallets.push(r.account_id);
    }
    let wallets = Arc::new(wallets);
    let client = PaymentClient::new(sdk);
    // One unit per transfer out of the largest allowed credit: no wallet runs dry.
    for w in 0..BENCH_WALLETS {
        client
            .credit(
                CreditRequest {
                    player_id: wallets[w].clone(),
                    currency: "GOLD".into(),
                    amount: config.domains.payment.max_amount,
                    reason: "bench seed".into(),
                    idempotency_key: format!("bench-seed-{w}"),
                },
                &CallOptions::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("seeding wallets: {e}"))?;
    }
    let mut cells = Vec::new();
    for &c in &args.concurrency {
        let (client, wallets) = (client.clone(), wallets.clone());
        let op = move |worker: usize, i: u64| {
            let client = client.clone();
            let from = rand::random_range(0..BENCH_WALLETS);
            let to = (from + rand::random_range(1..BENCH_WALLETS)) % BENCH_WALLETS;
            let request = TransferRequest {
                from_player_id: wallets[from].clone(),
                to_player_id: wallets[to].clone(),
                currency: "GOLD".into(),
                amount: 1,
                reason: String::new(),
                idempotency_key: format!("bench-c{c}-w{worker}-{i}"),
            };
            async move {
                client
                    .transfer(request, &CallOptions::default())
                    .await
                    .map(|_| ())
            }
        };
        cells.push(
            measure(
                base,
                Some(&store),
                "sdk payment.transfer (durable, 8 wallets)",
                c,
                args.seconds,
                op,
            )
            .await,
        );
    }
    serving.stop().await;
    auth_serving.stop().await;
    Ok(cells)
}

/// Serves world-state over `store`, writes one fact, and measures Get of it (served
/// from the store's cache) at every concurrency level.
async fn measure_world_gets(
    env: &Env,
    store: Store,
    config: &Config,
    base: &Baseline,
    args: &BenchArgs,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    use aicore_proto::aicore::world_state::v1 as ws;
    let (load, payload) = (&base.nats, &base.payload);
    let serving = serve_domain(env, "world_state", store.clone(), config, stop).await?;
    let client =
        ws::WorldStateClient::new(aicore_sdk::Client::new(load.clone(), Default::default()));
    client
        .set(
            ws::SetRequest {
                key: "bench.hot".into(),
                data: payload.clone(),
                content_type: "application/octet-stream".into(),
                expected_version: None,
                idempotency_key: String::new(),
            },
            &CallOptions::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("seeding the world fact: {e}"))?;
    let mut cells = Vec::new();
    for &c in &args.concurrency {
        let client = client.clone();
        let op = move |_: usize, _: u64| {
            let client = client.clone();
            async move {
                client
                    .get(
                        ws::GetRequest {
                            key: "bench.hot".into(),
                        },
                        &CallOptions::default(),
                    )
                    .await
                    .map(|_| ())
            }
        };
        cells.push(
            measure(
                base,
                Some(&store),
                "sdk world_state.get (cached)",
                c,
                args.seconds,
                op,
            )
            .await,
        );
    }
    // Sets of 4096 facts: each a durable write that appends to the change log (pruned
    // to its retention) and queues an event in the outbox.
    for &c in &args.concurrency {
        let client = client.clone();
        let payload = payload.clone();
        let op = move |worker: usize, i: u64| {
            let (client, payload) = (client.clone(), payload.clone());
            async move {
                client
                    .set(
                        ws::SetRequest {
                            key: format!("bench.w{worker}.{}", i % 64),
                            data: payload,
                            content_type: "application/octet-stream".into(),
                            expected_version: None,
                            idempotency_key: String::new(),
                        },
                        &CallOptions::default(),
                    )
                    .await
                    .map(|_| ())
            }
        };
        cells.push(
            measure(
                base,
                Some(&store),
                "sdk world_state.set (durable, change log)",
                c,
                args.seconds,
                op,
            )
            .await,
        );
    }
    serving.stop().await;
    Ok(cells)
}

/// Row names of the HTTP paths.
const HTTP_BARE: &str = "http bare axum->nats forwarder";
const HTTP_GATEWAY: &str = "http gateway (auth+json+limits+metrics)";
/// The bare forwarder's echo subject.
const HTTP_ECHO: &str = "svc.bench.v1.http_echo";

/// An HTTP/1.1 load client with a connection pool (keep-alive), in-process like the other
/// load generators.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

/// Serves `router` on a free loopback port (with connect info, as the gateway needs)
/// until `stop`; returns its address.
async fn serve_http(router: axum::Router, stop: CancellationToken) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    });
    Ok(addr)
}

/// One POST; true on 200 with the whole body read.
async fn post(client: &HttpClient, uri: &str, token: Option<&str>, body: Bytes) -> bool {
    use http_body_util::BodyExt;
    let mut req = axum::http::Request::post(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let Ok(req) = req.body(http_body_util::Full::new(body)) else {
        return false;
    };
    match client.request(req).await {
        Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// The gateway rows: a real auth domain (in-process, its own store) checks the bearer
/// token (cached after the first call); state_manager.get is answered by a stub responder
/// on its subject with a fixed reply, so the row measures the gateway's own work (auth
/// cache, rate limit, in-flight bound, JSON ↔ protobuf, metrics, SDK call) rather than a
/// domain's. The bare forwarder posts the same JSON body to an echo responder and returns
/// its bytes; both bodies are `--payload` bytes of JSON in, about as many out.
async fn measure_gateway(
    env: &Env,
    config: &Config,
    base: &Baseline,
    args: &BenchArgs,
    dir: &std::path::Path,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    use aicore_proto::aicore::auth::v1 as auth;
    use aicore_proto::aicore::state_manager::v1::{GetResponse, ObjectMetadata};
    use prost::Message;
    let load = &base.nats;

    // The JSON request, padded to the payload size.
    let head = r#"{"playerId":"bench","key":""#;
    let pad = args.payload.saturating_sub(head.len() + 2).max(1);
    let json = Bytes::from(format!("{head}{}\"}}", "k".repeat(pad)));

    // Responders: an echo for the forwarder, a fixed GetResponse for the gateway.
    let responder = env.connect("domains", "bench-http-responders").await?;
    let reply = Bytes::from(
        GetResponse {
            metadata: Some(ObjectMetadata {
                player_id: "bench".into(),
                key: "k".repeat(pad.min(64)),
                version: 1,
                ..Default::default()
            }),
            data: Bytes::from(vec![b'x'; args.payload / 4]),
        }
        .encode_to_vec(),
    );
    let mut echo_sub = responder.subscribe(HTTP_ECHO).await?;
    let mut get_sub = responder.subscribe("svc.state_manager.v1.get").await?;
    let (n1, n2) = (responder.clone(), responder.clone());
    let responders = [
        tokio::spawn(async move {
            while let Some(m) = echo_sub.next().await {
                if let Some(r) = m.reply {
                    let _ = n1.publish(r, m.payload).await;
                }
            }
        }),
        tokio::spawn(async move {
            while let Some(m) = get_sub.next().await {
                if let Some(r) = m.reply {
                    let _ = n2.publish(r, reply.clone()).await;
                }
            }
        }),
    ];
    responder.flush().await?;

    // auth, for real, and one player's token.
    let auth_store = Store::open(&dir.join("bench-auth.redb"), StoreOptions::default())?;
    let auth_serving =
        serve_domain(env, "auth", auth_store.clone(), config, stop.child_token()).await?;
    let a = auth::AuthClient::new(aicore_sdk::Client::new(load.clone(), Default::default()));
    let password = "bench-violet-otter-lantern";
    let options = CallOptions::default();
    ready("registering the bench player", || {
        a.register(
            auth::RegisterRequest {
                username: "bench".into(),
                password: password.into(),
                display_name: String::new(),
            },
            &options,
        )
    })
    .await?;
    let login = a
        .login(
            auth::LoginRequest {
                username: "bench".into(),
                password: password.into(),
                user_agent: "aicore bench".into(),
            },
            &CallOptions::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("logging in the bench player: {e}"))?;
    let bearer: Arc<str> = format!("Bearer {}", login.access_token).into();

    // The two servers.
    let forwarder_nats = env.connect("gateway", "bench-forwarder").await?;
    let forwarder = axum::Router::new().route(
        "/echo",
        axum::routing::post(move |body: Bytes| {
            let nats = forwarder_nats.clone();
            async move {
                match nats.request(HTTP_ECHO, body).await {
                    Ok(m) => (axum::http::StatusCode::OK, m.payload).into_response(),
                    Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                }
            }
        }),
    );
    let http_config = crate::config::HttpConfig {
        // Limits are checked on every request but never bite: one account at full speed.
        rate_limit_per_sec: 1e9,
        rate_limit_burst: 1_000_000,
        ..config.http.clone()
    };
    let (gateway, _listener) = crate::gateway::build(
        &http_config,
        config.http_max_body_bytes(),
        config.nats.max_payload,
        &env.url,
        env.tls("gateway").as_ref(),
        vec!["auth", "state_manager"],
        stop.child_token(),
    )
    .await?;
    let bare_addr = serve_http(forwarder, stop.child_token()).await?;
    let gw_addr = serve_http(gateway, stop.child_token()).await?;

    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build_http();
    let bare_uri: Arc<str> = format!("http://{bare_addr}/echo").into();
    let gw_uri: Arc<str> = format!("http://{gw_addr}/v1/state_manager/get").into();
    if !post(&client, &gw_uri, Some(&bearer), json.clone()).await {
        anyhow::bail!("the gateway did not answer the bench request");
    }
    let mut cells = Vec::new();
    for &c in &args.concurrency {
        // Both HTTP paths and the raw baseline take turns, so the gateway's share of the
        // forwarder compares slices of the same seconds.
        let (bare, uri, body) = (client.clone(), bare_uri.clone(), json.clone());
        let bare = op(move |_, _| {
            let (client, uri, body) = (bare.clone(), uri.clone(), body.clone());
            async move { post(&client, &uri, None, body).await }
        });
        let (client, uri, body, bearer) =
            (client.clone(), gw_uri.clone(), json.clone(), bearer.clone());
        let gateway = op(move |_, _| {
            let (client, uri, body, bearer) =
                (client.clone(), uri.clone(), body.clone(), bearer.clone());
            async move { post(&client, &uri, Some(&bearer), body).await }
        });
        cells.extend(
            measure_rows(
                base,
                None,
                c,
                args.seconds,
                vec![(HTTP_BARE, bare), (HTTP_GATEWAY, gateway)],
            )
            .await,
        );
    }
    stop.cancel();
    for r in responders {
        r.abort();
    }
    auth_serving.stop().await;
    auth_store.close().await;
    Ok(cells)
}

/// The gateway's throughput as a share of the bare forwarder's, per concurrency.
fn print_gateway_ratios(cells: &[Cell], args: &BenchArgs) {
    let rps = |name: &str, c: usize| {
        cells
            .iter()
            .find(|x| x.name == name && x.concurrency == c)
            .map(|x| x.rps)
    };
    for &c in &args.concurrency {
        if let (Some(g), Some(b)) = (rps(HTTP_GATEWAY, c), rps(HTTP_BARE, c))
            && b > 0.0
        {
            println!("gateway vs bare forwarder at C={c}: {:.0}%", 100.0 * g / b);
        }
    }
}

/// Runs the benchmark and prints its table.
pub async fn run(mut config: Config, args: BenchArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let stop = CancellationToken::new();
    let binary = resolve_binary(config.nats.server_bin.as_deref())?;
    // The default server, as `aicore run` configures it.
    let certs = dir.path().join("certs");
    let ca = Authority::open_or_create(&certs, config.security.ca_days)?;
    let now = std::time::SystemTime::now();
    let sans = security::server_sans(&config.security, &config.nats.host);
    security::ensure_issued(&ca, &config.security, &sans, now)?;
    let tls = security::nats_tls(&ca, &config.security, now)?;
    let mut server =
        |label: &str, tls: Option<crate::nats_child::NatsTls>| -> Result<NatsChildConfig> {
            config.nats.port = 0;
            config.nats.monitor_port = 0;
            config.pick_free_ports()?;
            Ok(NatsChildConfig {
                binary: binary.clone(),
                host: config.nats.host.clone(),
                port: config.nats.port,
                monitor_port: config.nats.monitor_port,
                store_dir: dir.path().join(format!("jetstream-{label}")),
                config_path: dir.path().join(format!("nats-server-{label}.conf")),
                tls,
                ..NatsChildConfig::default()
            })
        };
    let tls_cfg = server("tls", Some(tls))?;
    let plain_cfg = server("plain", None)?;
    let tls_child = NatsChild::start(tls_cfg, stop.child_token()).await?;
    let plain_child = NatsChild::start(plain_cfg, stop.child_token()).await?;
    let envs = [
        Env {
            label: "mTLS",
            url: tls_child.client_url(),
            certs: Some(certs),
        },
        Env {
            label: "plaintext",
            url: plain_child.client_url(),
            certs: None,
        },
    ];
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let (tls_base, tls_echo) = baseline(&envs[0], &payload).await?;
    let (plain_base, plain_echo) = baseline(&envs[1], &payload).await?;

    // The raw rows on their own, then every other row interleaved with raw slices of its
    // own server (see [`measure_rows`]): its ratio is to the raw of the same seconds.
    let mut raw: Vec<(&str, Cell)> = Vec::new();
    for (env, base) in envs.iter().zip([&tls_base, &plain_base]) {
        if env.certs.is_none() && !args.plaintext {
            continue;
        }
        for &c in &args.concurrency {
            let r = interleaved(c, args.seconds, slices(args.seconds), &[base.op()], None).await;
            raw.extend(
                r.into_iter()
                    .map(|s| (env.label, s.into_cell(RAW, c, None))),
            );
        }
    }
    let link = match args.plaintext {
        true => raw_tls_vs_plaintext(&tls_base, &plain_base, &args).await,
        false => Vec::new(),
    };
    let (tls_rows, stats) = run_rows(
        &envs[0],
        &tls_base,
        &config,
        &args,
        &dir.path().join("mtls"),
        stop.child_token(),
    )
    .await?;
    let plain_rows = match args.plaintext {
        true => {
            run_rows(
                &envs[1],
                &plain_base,
                &config,
                &args,
                &dir.path().join("plain"),
                stop.child_token(),
            )
            .await?
            .0
        }
        false => Vec::new(),
    };
    tls_echo.abort();
    plain_echo.abort();
    tls_child.stop().await;
    plain_child.stop().await;

    let (tls_raw, plain_raw): (Vec<_>, Vec<_>) = raw.into_iter().partition(|(l, _)| *l == "mTLS");
    let mut main: Vec<Cell> = tls_raw.into_iter().map(|(_, c)| c).collect();
    main.extend(tls_rows);
    let mut plain: Vec<Cell> = plain_raw.into_iter().map(|(_, c)| c).collect();
    plain.extend(plain_rows);
    print_table(&main, &plain, &link, &args);
    print_gateway_ratios(&main, &args);
    for c in main
        .iter()
        .chain(&plain)
        .chain(&link)
        .filter(|c| c.errors > 0)
    {
        println!(
            "errors in {} at C={}: {} (first: {})",
            c.name,
            c.concurrency,
            c.errors,
            c.first_error.as_deref().unwrap_or("?")
        );
    }
    if stats.commits > 0 {
        println!(
            "group commit (mTLS run): {} writes in {} durable commits (mean batch {:.1})",
            stats.writes,
            stats.commits,
            stats.writes as f64 / stats.commits as f64
        );
    }
    Ok(())
}

/// Every row but the raw one, on `env` (interleaved with `base`, its raw baseline), in
/// `dir`; returns the cells and the main store's commit statistics.
async fn run_rows(
    env: &Env,
    base: &Baseline,
    config: &Config,
    args: &BenchArgs,
    dir: &std::path::Path,
    stop: CancellationToken,
) -> Result<(Vec<Cell>, aicore_runtime::store::StoreStats)> {
    std::fs::create_dir_all(dir)?;
    let (load, payload) = (&base.nats, &base.payload);
    let mut cells = Vec::new();
    // The same echo through the domain runtime and the SDK (deadline header, micro
    // service API, a task per request, retries/breaker bookkeeping): the framework's
    // own share of every domain call, with no domain work.
    if args.wants("runtime") {
        let runtime_nats = env.connect("domains", "bench-runtime-echo").await?;
        let serving = serve::serve(
            runtime_nats.clone(),
            Arc::new(EchoService),
            ServeOptions::default(),
            stop.child_token(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        runtime_nats.flush().await?;
        let sdk = aicore_sdk::Client::new(load.clone(), Default::default());
        for &c in &args.concurrency {
            let (sdk, p) = (sdk.clone(), payload.clone());
            cells.push(
                measure(
                    base,
                    None,
                    "sdk+runtime echo (no domain work)",
                    c,
                    args.seconds,
                    move |_, _| {
                        let (sdk, p) = (sdk.clone(), p.clone());
                        async move {
                            use aicore_proto::Transport;
                            sdk.unary(&ECHO_METHODS[0], p, &CallOptions::default())
                                .await
                                .map(|_| ())
                        }
                    },
                )
                .await,
            );
        }
        serving.stop().await;
    }

    // HTTP: the gateway against a bare axum→NATS forwarder, same JSON body in and out.
    if args.wants("http") {
        cells.extend(measure_gateway(env, config, base, args, dir, stop.child_token()).await?);
    }

    // The domain path, group commit on.
    // The store as configured (`[store]` of `--config`), so a run shows what a setting does.
    let store = Store::open(&dir.join("bench.redb"), config.store.options())?;
    let serving = serve_domain(
        env,
        "state_manager",
        store.clone(),
        config,
        stop.child_token(),
    )
    .await?;
    let client = StateManagerClient::new(aicore_sdk::Client::new(load.clone(), Default::default()));
    client
        .put(
            PutRequest {
                player_id: "bench".into(),
                key: "hot".into(),
                data: payload.clone(),
                content_type: "application/octet-stream".into(),
                expected_version: None,
                idempotency_key: String::new(),
            },
            &CallOptions::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
    for &c in args.concurrency.iter().filter(|_| args.wants("state")) {
        let client = client.clone();
        cells.push(
            measure(
                base,
                Some(&store),
                "sdk state_manager.get (cached)",
                c,
                args.seconds,
                move |_, _| {
                    let client = client.clone();
                    async move {
                        client
                            .get(
                                GetRequest {
                                    player_id: "bench".into(),
                                    key: "hot".into(),
                                    version: 0,
                                },
                                &CallOptions::default(),
                            )
                            .await
                            .map(|_| ())
                    }
                },
            )
            .await,
        );
    }
    let put = |client: StateManagerClient<aicore_sdk::Client>, payload: Bytes| {
        move |worker: usize, i: u64| {
            let (client, payload) = (client.clone(), payload.clone());
            async move {
                client
                    .put(
                        PutRequest {
                            player_id: format!("bench-{worker}"),
                            key: format!("k{}", i % 64),
                            data: payload,
                            content_type: "application/octet-stream".into(),
                            expected_version: None,
                            idempotency_key: String::new(),
                        },
                        &CallOptions::default(),
                    )
                    .await
                    .map(|_| ())
            }
        }
    };
    for &c in args.concurrency.iter().filter(|_| args.wants("state")) {
        cells.push(
            measure(
                base,
                Some(&store),
                "sdk state_manager.put (durable, group commit)",
                c,
                args.seconds,
                put(client.clone(), payload.clone()),
            )
            .await,
        );
    }
    if args.wants("payment") {
        cells.extend(
            measure_transfers(env, store.clone(), config, base, args, stop.child_token()).await?,
        );
    }
    if args.wants("world") {
        cells.extend(
            measure_world_gets(env, store.clone(), config, base, args, stop.child_token()).await?,
        );
    }
    serving.stop().await;
    let stats = store.stats();
    store.close().await;

    // The same path without the write-ahead log (every batch a durable redb commit), and
    // with one durable redb commit per request: the store's own baselines.
    let baselines = [
        (
            "sdk state_manager.put (group commit, no log)",
            1024,
            "state",
        ),
        (
            "sdk state_manager.put (one commit per request)",
            1,
            "single",
        ),
    ];
    for (i, (name, max_batch, group)) in baselines.into_iter().enumerate() {
        if !args.wants(group) {
            continue;
        }
        let c = args.concurrency.iter().copied().max().unwrap_or(64).min(64);
        let path = dir.join(format!("baseline-{i}.redb"));
        let store = Store::open(
            &path,
            StoreOptions {
                max_batch,
                wal: false,
                ..config.store.options()
            },
        )?;
        let serving = serve_domain(
            env,
            "state_manager",
            store.clone(),
            config,
            stop.child_token(),
        )
        .await?;
        // A fresh client (its own circuit breakers), and the first Put through before
        // the clock starts.
        let client =
            StateManagerClient::new(aicore_sdk::Client::new(load.clone(), Default::default()));
        let first = put(client.clone(), payload.clone());
        ready(name, || first(0, 0)).await?;
        cells.push(
            measure(
                base,
                Some(&store),
                name,
                c,
                args.seconds,
                put(client, payload.clone()),
            )
            .await,
        );
        serving.stop().await;
        store.close().await;
    }
    Ok((cells, stats))
}

/// A cell's throughput as a share of the raw slices interleaved with it.
fn share(c: &Cell) -> Option<f64> {
    c.raw_rps.filter(|r| *r > 0.0).map(|r| c.rps / r)
}

/// Prints the table: every row on the default (mTLS) server, its share of the raw
/// baseline on the same server, and, when the plaintext run exists, the same row there
/// and the TLS row's throughput as a share of the plaintext one. The two runs are minutes
/// apart, so that share is computed from ratios taken within each run: (row / raw) on
/// mTLS × (raw mTLS / raw plaintext, interleaved) ÷ (row / raw) on plaintext; for the raw
/// row it is the interleaved ratio itself.
fn print_table(cells: &[Cell], plain: &[Cell], link: &[Cell], args: &BenchArgs) {
    println!(
        "aicore bench: {} s per cell, {}-byte payload, {} cores; every row on the default \
         nats-server (mutual TLS, pinned certificates, accounts, least-privilege users)",
        args.seconds,
        args.payload,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<48} {:>4} {:>10} {:>9} {:>9} {:>10} {:>7} {:>10} {:>7} {:>8} {:>7}",
        "path",
        "C",
        "req/s",
        "p50 ms",
        "p99 ms",
        "raw req/s",
        "vs raw",
        "plain r/s",
        "vs raw",
        "vs plain",
        "errors"
    );
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.0}%", 100.0 * x));
    for c in cells {
        fn find<'a>(v: &'a [Cell], name: &str, c: usize) -> Option<(&'a Cell, Option<f64>)> {
            v.iter()
                .find(|x| x.name == name && x.concurrency == c)
                .map(|x| (x, share(x)))
        }
        let tls_cost = find(link, RAW_TLS, c.concurrency).and_then(|(_, r)| r);
        let twin = find(plain, c.name, c.concurrency);
        let vs_plain = match (c.name == RAW, share(c), twin.and_then(|(_, s)| s), tls_cost) {
            (true, ..) => tls_cost,
            (false, Some(st), Some(sp), Some(r)) if sp > 0.0 => Some(st * r / sp),
            _ => None,
        };
        println!(
            "{:<48} {:>4} {:>10.0} {:>9.3} {:>9.3} {:>10} {:>7} {:>10} {:>7} {:>8} {:>7}",
            c.name,
            c.concurrency,
            c.rps,
            c.p50.as_secs_f64() * 1e3,
            c.p99.as_secs_f64() * 1e3,
            c.raw_rps.map_or("-".into(), |r| format!("{r:.0}")),
            pct(share(c)),
            twin.map_or("-".into(), |(t, _)| format!("{:.0}", t.rps)),
            pct(twin.and_then(|(_, s)| s)),
            pct(vs_plain),
            c.errors
        );
    }
    let find = |name: &str, c: usize| cells.iter().find(|x| x.name == name && x.concurrency == c);
    if let (Some(g), Some(s)) = (
        find("sdk state_manager.put (durable, group commit)", 64),
        find("sdk state_manager.put (one commit per request)", 64),
    ) && let (Some(gs), Some(ss)) = (share(g), share(s))
        && ss > 0.0
        && s.rps > 0.0
    {
        // The two rows run minutes apart; each as a share of its own raw slices, the
        // machine's drift between them cancels.
        println!(
            "group commit vs one commit per request at C=64: {:.1}x ({:.1}x in req/s; \
             the first compares each row's share of its own raw slices)",
            gs / ss,
            g.rps / s.rps
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Each call of a [`recorder`]: its load's tag, worker, call number and when it ran.
    type Calls = Arc<Mutex<Vec<(u8, usize, u64, Instant)>>>;

    /// A load that records each call.
    fn recorder(tag: u8, log: Calls) -> Op {
        op(move |w, i| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((tag, w, i, Instant::now()));
                tokio::time::sleep(Duration::from_millis(1)).await;
                true
            }
        })
    }

    #[tokio::test]
    async fn loads_take_turns_and_call_numbers_never_repeat_within_a_cell() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let loads = [recorder(0, log.clone()), recorder(1, log.clone())];
        let samples = interleaved(2, 0.3, 3, &loads, None).await;
        assert_eq!(samples.len(), 2);
        for s in &samples {
            assert!(s.lat.len() > 10, "{} calls", s.lat.len());
            assert!((s.seconds - 0.3).abs() < 1e-9, "{}", s.seconds);
            assert_eq!(s.errors, 0);
        }
        let mut log = log.lock().unwrap().clone();
        // Per load and worker, the call numbers run on across slices (keys derived from
        // them, idempotency keys among them, must not repeat).
        for tag in 0..2 {
            for w in 0..2 {
                let is: Vec<u64> = log
                    .iter()
                    .filter(|(t, x, ..)| *t == tag && *x == w)
                    .map(|e| e.2)
                    .collect();
                assert_eq!(is, (0..is.len() as u64).collect::<Vec<_>>());
            }
        }
        // Six turns in order: 0, 1, 0, 1, 0, 1.
        log.sort_by_key(|e| e.3);
        let mut turns: Vec<u8> = log.iter().map(|e| e.0).collect();
        turns.dedup();
        assert_eq!(turns, vec![0, 1, 0, 1, 0, 1]);
    }

    #[tokio::test]
    async fn failed_calls_are_counted_not_timed() {
        let calls = op(|_, i| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if i % 2 == 0 { Ok(()) } else { Err("refused") }
        });
        let s = interleaved(1, 0.2, 1, &[calls], None).await.remove(0);
        assert!(s.errors > 0);
        assert_eq!(s.first_error.as_deref(), Some("refused"));
        // Successful calls only count toward req/s.
        let ok = s.lat.len() as u64;
        assert!(ok.abs_diff(s.errors) <= 2, "{ok} ok, {} failed", s.errors);
        assert!((s.rps() - ok as f64 / 0.2).abs() < 1e-6);
    }

    #[test]
    fn a_cell_is_cut_into_about_one_slice_a_second() {
        assert_eq!(slices(0.2), 1);
        assert_eq!(slices(3.0), 3);
        assert_eq!(slices(5.4), 5);
    }
}
