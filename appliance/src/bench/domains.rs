//! Rows of real domains with contention: payment transfers between a few wallets,
//! world-state reads and writes, and the game reads that are pure computation over
//! cached state (npc-behavior Decide, language-system Translate).

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use aicore_proto::CallOptions;
use aicore_proto::aicore::auth::v1::{AuthClient, RegisterRequest};
use aicore_proto::aicore::language_system::v1 as ls;
use aicore_proto::aicore::npc_behavior::v1 as npc;
use aicore_proto::aicore::payment::v1::{CreditRequest, PaymentClient, TransferRequest};
use aicore_proto::aicore::world_state::v1 as ws;
use aicore_runtime::store::Store;

use crate::config::Config;

use super::env::*;
use super::load::*;
use super::*;

/// Wallets the payment.transfer row moves money between: few, so transfers contend.
pub(super) const BENCH_WALLETS: usize = 8;

/// Serves payment over `store`, funds the bench wallets, and measures Transfer between
/// random pairs of them (a fresh idempotency key per call) at every concurrency level.
pub(super) async fn measure_transfers(
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
    let wallets = Arc::new(register_wallet_owners(&auth).await?);
    let client = PaymentClient::new(sdk);
    fund_wallets(&client, &wallets, config).await?;
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

/// Registers the bench wallets' owners with auth; returns their account ids.
async fn register_wallet_owners(auth: &AuthClient<aicore_sdk::Client>) -> Result<Vec<String>> {
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
    Ok(wallets)
}

/// Credits each of the bench wallets (all [`BENCH_WALLETS`] of them).
async fn fund_wallets(
    client: &PaymentClient<aicore_sdk::Client>,
    wallets: &[String],
    config: &Config,
) -> Result<()> {
    // One unit per transfer out of the largest allowed credit: no wallet runs dry.
    for (w, wallet) in wallets.iter().enumerate() {
        client
            .credit(
                CreditRequest {
                    player_id: wallet.clone(),
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
    Ok(())
}

/// Serves world-state over `store`, writes one fact, and measures Get of it (served
/// from the store's cache) at every concurrency level.
pub(super) async fn measure_world_gets(
    env: &Env,
    store: Store,
    config: &Config,
    base: &Baseline,
    args: &BenchArgs,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    let (load, payload) = (&base.nats, &base.payload);
    let serving = serve_domain(env, "world_state", store.clone(), config, stop).await?;
    let client =
        ws::WorldStateClient::new(aicore_sdk::Client::new(load.clone(), Default::default()));
    seed_world_fact(&client, payload).await?;
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
    cells.extend(measure_world_sets(base, &store, &client, payload, args).await);
    serving.stop().await;
    Ok(cells)
}

/// Sets the fact the cached Gets read (`bench.hot`).
async fn seed_world_fact(
    client: &ws::WorldStateClient<aicore_sdk::Client>,
    payload: &Bytes,
) -> Result<()> {
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
    Ok(())
}

/// Measures world-state Set at every concurrency level.
async fn measure_world_sets(
    base: &Baseline,
    store: &Store,
    client: &ws::WorldStateClient<aicore_sdk::Client>,
    payload: &Bytes,
    args: &BenchArgs,
) -> Vec<Cell> {
    let mut cells = Vec::new();
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
                Some(store),
                "sdk world_state.set (durable, change log)",
                c,
                args.seconds,
                op,
            )
            .await,
        );
    }
    cells
}

/// Serves npc-behavior and language-system over `store`, defines one NPC and a few
/// strings, and measures Decide (at a given game time, so no time-manager call: scoring
/// over cached rows) and Translate (a plural and a placeholder through a fallback chain)
/// at every concurrency level. Both should be close to a cached world-state Get.
pub(super) async fn measure_game_reads(
    env: &Env,
    store: Store,
    config: &Config,
    base: &Baseline,
    args: &BenchArgs,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    let load = &base.nats;
    let npc_serving =
        serve_domain(env, "npc_behavior", store.clone(), config, stop.clone()).await?;
    let ls_serving = serve_domain(env, "language_system", store.clone(), config, stop).await?;
    let sdk = aicore_sdk::Client::new(load.clone(), Default::default());
    let npcs = npc::NpcBehaviorClient::new(sdk.clone());
    let strings = ls::LanguageSystemClient::new(sdk);
    define_bench_npc(&npcs).await?;
    put_bench_strings(&strings).await?;
    let mut cells = measure_decides(base, &store, &npcs, args).await;
    cells.extend(measure_translates(base, &store, &strings, args).await);
    npc_serving.stop().await;
    ls_serving.stop().await;
    Ok(cells)
}

/// Defines the NPC the Decide row asks for (`bench`): a trait, a need, a schedule and
/// four actions.
async fn define_bench_npc(npcs: &npc::NpcBehaviorClient<aicore_sdk::Client>) -> Result<()> {
    let consider = |input: &str, curve: npc::Curve| npc::Consideration {
        input: input.into(),
        curve: curve as i32,
        ..Default::default()
    };
    let action = |id: &str, cs: Vec<npc::Consideration>| npc::Action {
        action_id: id.into(),
        base_score: 0.9,
        considerations: cs,
        ..Default::default()
    };
    npcs.define(
        npc::DefineRequest {
            npc: Some(npc::NpcDefinition {
                npc_id: "bench".into(),
                name: "Bench".into(),
                traits: [("bravery".to_string(), 0.4)].into(),
                needs: vec![npc::Need {
                    need_id: "hunger".into(),
                    value: 0.6,
                    decay_per_game_hour: 0.05,
                }],
                schedule: vec![npc::ScheduleEntry {
                    from_hour: 8,
                    to_hour: 18,
                    activity: "work".into(),
                    location_id: "shop".into(),
                }],
                actions: vec![
                    action("eat", vec![consider("need:hunger", npc::Curve::Inverse)]),
                    action("work", vec![consider("schedule:work", npc::Curve::Linear)]),
                    action(
                        "flee",
                        vec![
                            consider("context:danger", npc::Curve::Logistic),
                            consider("trait:bravery", npc::Curve::Inverse),
                        ],
                    ),
                    action(
                        "greet",
                        vec![consider("relation:affinity", npc::Curve::Linear)],
                    ),
                ],
                ..Default::default()
            }),
            expected_version: None,
        },
        &CallOptions::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("defining the bench NPC: {e}"))?;
    Ok(())
}

/// Puts the string the Translate row asks for (`shop.apples`) in English and French.
async fn put_bench_strings(strings: &ls::LanguageSystemClient<aicore_sdk::Client>) -> Result<()> {
    for (locale, text) in [
        ("en", "{count} apples for {name}"),
        ("fr", "{count} pommes pour {name}"),
    ] {
        strings
            .put_strings(
                ls::PutStringsRequest {
                    locale: locale.into(),
                    strings: vec![ls::LocalizedString {
                        key: "shop.apples".into(),
                        text: text.into(),
                        plural_forms: [("one".to_string(), "one apple".to_string())].into(),
                        ..Default::default()
                    }],
                    replace_all: false,
                },
                &CallOptions::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("putting the bench strings: {e}"))?;
    }
    Ok(())
}

/// Measures npc-behavior Decide at every concurrency level.
async fn measure_decides(
    base: &Baseline,
    store: &Store,
    npcs: &npc::NpcBehaviorClient<aicore_sdk::Client>,
    args: &BenchArgs,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &c in &args.concurrency {
        let npcs = npcs.clone();
        let op = move |_: usize, i: u64| {
            let npcs = npcs.clone();
            async move {
                npcs.decide(
                    npc::DecideRequest {
                        npc_id: "bench".into(),
                        player_id: "p1".into(),
                        context: [("danger".to_string(), (i % 10) as f64 / 10.0)].into(),
                        at_game_seconds: Some((i % 24) as i64 * 3600),
                        ..Default::default()
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
                Some(store),
                "sdk npc_behavior.decide (4 actions)",
                c,
                args.seconds,
                op,
            )
            .await,
        );
    }
    cells
}

/// Measures language-system Translate at every concurrency level.
async fn measure_translates(
    base: &Baseline,
    store: &Store,
    strings: &ls::LanguageSystemClient<aicore_sdk::Client>,
    args: &BenchArgs,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &c in &args.concurrency {
        let strings = strings.clone();
        let op = move |_: usize, i: u64| {
            let strings = strings.clone();
            async move {
                strings
                    .translate(
                        ls::TranslateRequest {
                            locale: "fr-CA".into(),
                            items: vec![ls::TranslateItem {
                                key: "shop.apples".into(),
                                count: Some((i % 5) as i64),
                                args: [(
                                    "name".to_string(),
                                    ls::Argument {
                                        value: Some(ls::argument::Value::Text("Ana".into())),
                                    },
                                )]
                                .into(),
                            }],
                            allow_machine: false,
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
                Some(store),
                "sdk language_system.translate (plural, fallback)",
                c,
                args.seconds,
                op,
            )
            .await,
        );
    }
    cells
}
