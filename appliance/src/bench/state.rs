//! The state-manager rows: a cached Get and a durable Put with group commit, the rows of
//! other domains that share their store (payment, world, game), and the store's own
//! baselines (no write-ahead log, one durable commit per request).

use anyhow::Result;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use aicore_proto::CallOptions;
use aicore_proto::aicore::state_manager::v1::{GetRequest, PutRequest, StateManagerClient};
use aicore_runtime::store::{Store, StoreOptions};

use crate::config::Config;

use super::domains::{measure_game_reads, measure_transfers, measure_world_gets};
use super::env::{Env, serve_domain};
use super::load::{Baseline, Cell, measure, ready};
use super::{BenchArgs, metrics, traces};

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
pub(super) async fn measure_state(
    env: &Env,
    base: &Baseline,
    config: &Config,
    args: &BenchArgs,
    dir: &std::path::Path,
    stop: &CancellationToken,
) -> Result<(Vec<Cell>, aicore_runtime::store::StoreStats)> {
    let load = &base.nats;
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
    seed_hot(&client, &base.payload).await?;
    cells.extend(measure_state_rows(env, base, &store, &client, args, stop).await?);
    cells.extend(measure_shared_store(env, base, &store, config, args, stop).await?);
    serving.stop().await;
    let stats = store.stats();
    store.close().await;

    Ok((cells, stats))
}

/// Puts the object the cached Gets read (`bench`/`hot`).
async fn seed_hot(client: &StateManagerClient<aicore_sdk::Client>, payload: &Bytes) -> Result<()> {
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
    Ok(())
}

/// The state-manager rows that `--only` asks for: cached Get, the same traced, with
/// metrics off and on, and the durable Put.
async fn measure_state_rows(
    env: &Env,
    base: &Baseline,
    store: &Store,
    client: &StateManagerClient<aicore_sdk::Client>,
    args: &BenchArgs,
    stop: &CancellationToken,
) -> Result<Vec<Cell>> {
    let payload = &base.payload;
    let mut cells = Vec::new();
    for &c in args.concurrency.iter().filter(|_| args.wants("state")) {
        cells.push(
            measure(base, Some(store), traces::GET, c, args.seconds, {
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
            measure(base, Some(store), traces::TRACED_GET, c, args.seconds, {
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
                client,
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
                Some(store),
                "sdk state_manager.put (durable, group commit)",
                c,
                args.seconds,
                put(client.clone(), payload.clone()),
            )
            .await,
        );
    }
    Ok(cells)
}

/// The other domains' rows on the same store that `--only` asks for: payment, world, game.
async fn measure_shared_store(
    env: &Env,
    base: &Baseline,
    store: &Store,
    config: &Config,
    args: &BenchArgs,
    stop: &CancellationToken,
) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
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
    Ok(cells)
}

/// The same path without the write-ahead log (every batch a durable redb commit), and
/// with one durable redb commit per request: the store's own baselines.
pub(super) async fn measure_store_baselines(
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
