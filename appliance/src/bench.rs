//! `aicore bench`: throughput and latency of the appliance's request paths, each reported
//! as a ratio of a raw baseline measured in the same run on the same nats-server, so the
//! numbers mean something on a shared, noisy machine. It starts its own nats-server child
//! and store in a temporary directory and serves state-manager in-process on its own NATS
//! connection (as `aicore run` does); load comes from separate connections.
//!
//! Rows: raw async-nats request/reply echo; SDK state-manager Get of a cached object;
//! SDK state-manager Put (durable, group commit); the same Put with group commit off
//! (one durable commit per request) as the store's own baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use aicore_domains::runtime::{self, ServeOptions};
use aicore_domains::store::{Store, StoreOptions};
use aicore_domains::{Ctx, SystemClock, registry};
use aicore_proto::CallOptions;
use aicore_proto::aicore::state_manager::v1::{GetRequest, PutRequest, StateManagerClient};

use crate::config::Config;
use crate::nats_child::{NatsChild, NatsChildConfig, resolve_binary};
use crate::supervisor::connect;

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
}

/// One measured cell.
struct Cell {
    name: &'static str,
    concurrency: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

/// Runs `op` from `concurrency` tasks for `seconds` and measures each call.
async fn measure<F, Fut>(name: &'static str, concurrency: usize, seconds: f64, op: F) -> Cell
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    // Warm-up, a tenth of the run, not counted.
    let warm = Instant::now() + Duration::from_secs_f64(seconds / 10.0);
    let end = warm + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let ok = op(worker, i).await;
                i += 1;
                if start >= warm {
                    lat.push(start.elapsed());
                    if !ok {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Cell {
        name,
        concurrency,
        rps: lat.len() as f64 / seconds,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

/// Serves state-manager on its own connection over `store`.
async fn serve_state_manager(
    url: &str,
    store: Store,
    config: &Config,
    stop: CancellationToken,
) -> Result<runtime::ServiceHandle> {
    let nats = connect(url, "bench-domains").await?;
    let ctx = Ctx {
        store,
        clock: Arc::new(SystemClock),
        client: Some(aicore_sdk::Client::new(nats.clone(), Default::default())),
        config: Arc::new(config.domains.clone()),
    };
    let spec = registry::find("state_manager").context("state_manager is not registered")?;
    let dispatch = (spec.build)(&ctx).map_err(|e| anyhow::anyhow!("{e}"))?;
    let handle = runtime::serve(nats.clone(), dispatch, ServeOptions::default(), stop)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    nats.flush().await?;
    Ok(handle)
}

/// Runs the benchmark and prints its table.
pub async fn run(mut config: Config, args: BenchArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    config.nats.port = 0;
    config.nats.monitor_port = 0;
    config.pick_free_ports()?;
    let stop = CancellationToken::new();
    let child = NatsChild::start(
        NatsChildConfig {
            binary: resolve_binary(config.nats.server_bin.as_deref())?,
            host: config.nats.host.clone(),
            port: config.nats.port,
            monitor_port: config.nats.monitor_port,
            store_dir: dir.path().join("jetstream"),
            config_path: dir.path().join("nats-server.conf"),
            ..NatsChildConfig::default()
        },
        stop.child_token(),
    )
    .await?;
    let url = child.client_url();
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let mut cells = Vec::new();

    // Raw baseline: an echo responder on its own connection, handling in order.
    let responder = connect(&url, "bench-echo").await?;
    let mut sub = responder.subscribe("bench.echo").await?;
    let echo_nats = responder.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = echo_nats.publish(reply, m.payload).await;
            }
        }
    });
    responder.flush().await?;
    let load = connect(&url, "bench-load").await?;
    for &c in &args.concurrency {
        let (nats, p) = (load.clone(), payload.clone());
        cells.push(
            measure("raw request/reply", c, args.seconds, move |_, _| {
                let (nats, p) = (nats.clone(), p.clone());
                async move { nats.request("bench.echo", p).await.is_ok() }
            })
            .await,
        );
    }
    echo.abort();

    // The domain path, group commit on.
    let store = Store::open(&dir.path().join("bench.redb"), StoreOptions::default())?;
    let serving = serve_state_manager(&url, store.clone(), &config, stop.child_token()).await?;
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
    for &c in &args.concurrency {
        let client = client.clone();
        cells.push(
            measure(
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
                            .is_ok()
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
                    .is_ok()
            }
        }
    };
    for &c in &args.concurrency {
        cells.push(
            measure(
                "sdk state_manager.put (durable, group commit)",
                c,
                args.seconds,
                put(client.clone(), payload.clone()),
            )
            .await,
        );
    }
    serving.stop().await;
    store.close().await;

    // The same path with one durable commit per request.
    let single = Store::open(
        &dir.path().join("single.redb"),
        StoreOptions {
            max_batch: 1,
            ..StoreOptions::default()
        },
    )?;
    let serving = serve_state_manager(&url, single.clone(), &config, stop.child_token()).await?;
    let c = args.concurrency.iter().copied().max().unwrap_or(64).min(64);
    cells.push(
        measure(
            "sdk state_manager.put (one commit per request)",
            c,
            args.seconds,
            put(client.clone(), payload.clone()),
        )
        .await,
    );
    serving.stop().await;
    single.close().await;
    child.stop().await;

    print_table(&cells, &args);
    Ok(())
}

fn print_table(cells: &[Cell], args: &BenchArgs) {
    let raw = |c: usize| {
        cells
            .iter()
            .find(|x| x.name == "raw request/reply" && x.concurrency == c)
            .map(|x| x.rps)
    };
    println!(
        "aicore bench: {} s per cell, {}-byte payload, {} cores",
        args.seconds,
        args.payload,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<48} {:>4} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "path", "C", "req/s", "p50 ms", "p99 ms", "vs raw", "errors"
    );
    for c in cells {
        let ratio = raw(c.concurrency)
            .filter(|r| *r > 0.0)
            .map(|r| format!("{:.0}%", 100.0 * c.rps / r))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<48} {:>4} {:>10.0} {:>9.3} {:>9.3} {:>8} {:>7}",
            c.name,
            c.concurrency,
            c.rps,
            c.p50.as_secs_f64() * 1e3,
            c.p99.as_secs_f64() * 1e3,
            ratio,
            c.errors
        );
    }
    let find = |name: &str, c: usize| {
        cells
            .iter()
            .find(|x| x.name == name && x.concurrency == c)
            .map(|x| x.rps)
    };
    if let (Some(g), Some(s)) = (
        find("sdk state_manager.put (durable, group commit)", 64),
        find("sdk state_manager.put (one commit per request)", 64),
    ) && s > 0.0
    {
        println!(
            "group commit vs one commit per request at C=64: {:.1}x",
            g / s
        );
    }
}
