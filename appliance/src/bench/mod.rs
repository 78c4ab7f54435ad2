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

mod ai;
mod domains;
mod env;
mod http;
mod kb;
mod load;
mod metrics;
mod traces;

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use aicore_proto::CallOptions;
use aicore_proto::aicore::state_manager::v1::{GetRequest, PutRequest, StateManagerClient};
use aicore_runtime::metrics::Registry;
use aicore_runtime::serve::{self, ServeOptions};
use aicore_runtime::store::{Store, StoreOptions};

use crate::certs::Authority;
use crate::config::Config;
use crate::nats_child::{NatsChild, NatsChildConfig, resolve_binary};
use crate::security::{self};

use domains::{measure_game_reads, measure_transfers, measure_world_gets};
use env::{Env, baseline, raw_tls_vs_plaintext, serve_domain};
use http::{measure_gateway, print_gateway_ratios};
use load::{Baseline, Cell, interleaved, measure, ready, slices};

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
    /// single (one durable commit per request), ai (chat through ai-integration and
    /// ai-router against a local test server, and time to the first token), kb
    /// (knowledge-base indexing rate, search latency and index size at 10K and 100K
    /// documents), game (npc-behavior Decide and language-system Translate), metrics
    /// (a cached Get and the gateway with metrics off and on, same run), traces (the
    /// cached Get, and with http the gateway, again with every span exported over OTLP).
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
            metrics: Arc::new(Registry::new(config.metrics.enabled)),
        },
        Env {
            label: "plaintext",
            url: plain_child.client_url(),
            certs: None,
            metrics: Arc::new(Registry::new(config.metrics.enabled)),
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
    traces::print_trace_ratios(&main, &args);
    metrics::print_cost(&main, &args.concurrency);
    ai::print_ai_ratios(&main, &args);
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
    if args.wants("kb") {
        kb::measure_kb(dir.path(), stop.child_token()).await?;
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
    let mut cells = Vec::new();
    if args.wants("runtime") {
        cells.extend(measure_runtime_echo(env, base, args, stop.child_token()).await?);
    }
    // HTTP: the gateway against a bare axum→NATS forwarder, same JSON body in and out.
    if args.wants("http") || args.wants("metrics") {
        cells.extend(measure_gateway(env, config, base, args, dir, stop.child_token()).await?);
    }
    if args.wants("traces") {
        traces::start_once(stop.child_token()).await?;
        let traced = dir.join("traced");
        std::fs::create_dir_all(&traced)?;
        let _on = traces::Recording::on();
        let run = measure_gateway(env, config, base, args, &traced, stop.child_token()).await?;
        cells.extend(traces::traced(run));
    }

    // AI: a chat through ai-integration and ai-router against calling the provider directly.
    if args.wants("ai") {
        cells.extend(ai::measure_ai(env, config, base, args, dir, stop.child_token()).await?);
    }

    let (state, stats) = measure_state(env, base, config, args, dir, &stop).await?;
    cells.extend(state);
    cells.extend(measure_store_baselines(env, base, config, args, dir, &stop).await?);
    Ok((cells, stats))
}

/// The same echo through the domain runtime and the SDK (deadline header, micro service
/// API, a task per request, retries/breaker bookkeeping): the framework's own share of
/// every domain call, with no domain work.
async fn measure_runtime_echo(
    env: &Env,
    base: &Baseline,
    args: &BenchArgs,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    let (load, payload) = (&base.nats, &base.payload);
    let mut cells = Vec::new();
    let runtime_nats = env.connect("domains", "bench-runtime-echo").await?;
    let serving = serve::serve(
        runtime_nats.clone(),
        Arc::new(EchoService),
        ServeOptions {
            metrics: Some(env.metrics.clone()),
            ..ServeOptions::default()
        },
        stop,
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
    Ok(cells)
}

/// A state-manager Put of `payload` by `worker`, its `i`th: 64 keys per worker.
fn put(
    client: StateManagerClient<aicore_sdk::Client>,
    payload: Bytes,
) -> impl Fn(usize, u64) -> futures::future::BoxFuture<'static, Result<(), aicore_proto::Status>> + Clone
{
    move |worker: usize, i: u64| {
        let (client, payload) = (client.clone(), payload.clone());
        Box::pin(async move {
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
        })
    }
}

/// The domain path, group commit on: state-manager Get and Put, and the rows that share
/// its store (payment, world, game); also the store's statistics after them.
async fn measure_state(
    env: &Env,
    base: &Baseline,
    config: &Config,
    args: &BenchArgs,
    dir: &std::path::Path,
    stop: &CancellationToken,
) -> Result<(Vec<Cell>, aicore_runtime::store::StoreStats)> {
    let (load, payload) = (&base.nats, &base.payload);
    let mut cells = Vec::new();
    // The store as configured (`[store]` of `--config`), so a run shows what a setting does.
    let options = StoreOptions {
        metrics: env.metrics.switch(),
        ..config.store.options()
    };
    let store = Store::open(&dir.join("bench.redb"), options)?;
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
        cells.push(
            measure(base, Some(&store), traces::GET, c, args.seconds, {
                let client = client.clone();
                move |_, _| get_hot(client.clone())
            })
            .await,
        );
    }
    for &c in args.concurrency.iter().filter(|_| args.wants("traces")) {
        traces::start_once(stop.child_token()).await?;
        let _on = traces::Recording::on();
        cells.push(
            measure(base, Some(&store), traces::TRACED_GET, c, args.seconds, {
                let client = client.clone();
                move |_, _| get_hot(client.clone())
            })
            .await,
        );
    }
    if args.wants("metrics") {
        cells.extend(
            metrics::measure_get(
                base,
                &client,
                &env.metrics.switch(),
                &args.concurrency,
                args.seconds,
            )
            .await,
        );
    }
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
    if args.wants("game") {
        cells.extend(
            measure_game_reads(env, store.clone(), config, base, args, stop.child_token()).await?,
        );
    }
    serving.stop().await;
    let stats = store.stats();
    store.close().await;

    Ok((cells, stats))
}

/// The same path without the write-ahead log (every batch a durable redb commit), and
/// with one durable redb commit per request: the store's own baselines.
async fn measure_store_baselines(
    env: &Env,
    base: &Baseline,
    config: &Config,
    args: &BenchArgs,
    dir: &std::path::Path,
    stop: &CancellationToken,
) -> Result<Vec<Cell>> {
    let (load, payload) = (&base.nats, &base.payload);
    let mut cells = Vec::new();
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
    Ok(cells)
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

/// One cached state-manager Get of the seeded key (`bench`/`hot`).
pub(super) async fn get_hot(
    client: StateManagerClient<aicore_sdk::Client>,
) -> Result<(), aicore_proto::Status> {
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
