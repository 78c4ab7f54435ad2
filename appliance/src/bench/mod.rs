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

//!
//! This file runs the servers and the rows; `echo`, `state`, `http`, `ai`, `domains`, `kb`,
//! `metrics` and `traces` measure the rows, `load` drives the load, `table` prints it.

mod ai;
mod domains;
mod echo;
mod env;
mod http;
mod kb;
mod load;
mod metrics;
mod state;
mod table;
mod traces;

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use aicore_runtime::metrics::Registry;

use crate::certs::Authority;
use crate::config::Config;
use crate::nats_child::{NatsChild, NatsChildConfig, resolve_binary};
use crate::security::{self};

use echo::measure_runtime_echo;
use env::{Env, baseline, raw_tls_vs_plaintext};
use http::{measure_gateway, print_gateway_ratios};
use load::{Baseline, Cell, interleaved, slices};
use state::{measure_state, measure_store_baselines};
use table::print_table;

/// The raw baseline's row name.
const RAW: &str = "raw request/reply";
/// The raw baseline on the TLS server measured against the plaintext one.
const RAW_TLS: &str = "raw request/reply, mTLS vs plaintext";

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
    let (tls_child, plain_child, envs) = start_servers(&mut config, dir.path(), &stop).await?;
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let (tls_base, tls_echo) = baseline(&envs[0], &payload).await?;
    let (plain_base, plain_echo) = baseline(&envs[1], &payload).await?;

    // The raw rows on their own, then every other row interleaved with raw slices of its
    // own server (see [`measure_rows`]): its ratio is to the raw of the same seconds.
    let raw = measure_raw(&envs, [&tls_base, &plain_base], &args).await;
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
    print_report(&main, &plain, &link, &args);
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

/// Starts the two nats-servers in `dir`: the default one (mutual TLS, as `aicore run`
/// configures it) and a plaintext one with no users; returns them and their [`Env`]s,
/// mTLS first. Picks their free ports into `config`.
async fn start_servers(
    config: &mut Config,
    dir: &std::path::Path,
    stop: &CancellationToken,
) -> Result<(NatsChild, NatsChild, [Env; 2])> {
    let binary = resolve_binary(config.nats.server_bin.as_deref())?;
    // The default server, as `aicore run` configures it.
    let certs = dir.join("certs");
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
                store_dir: dir.join(format!("jetstream-{label}")),
                config_path: dir.join(format!("nats-server-{label}.conf")),
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
    Ok((tls_child, plain_child, envs))
}

/// The raw rows of each server (the plaintext one only with `--plaintext`), by the
/// server's label.
async fn measure_raw(
    envs: &[Env; 2],
    bases: [&Baseline; 2],
    args: &BenchArgs,
) -> Vec<(&'static str, Cell)> {
    let mut raw: Vec<(&str, Cell)> = Vec::new();
    for (env, base) in envs.iter().zip(bases) {
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
    raw
}

/// Prints the table, the ratios of the row groups, and the errors of every cell that had
/// any.
fn print_report(main: &[Cell], plain: &[Cell], link: &[Cell], args: &BenchArgs) {
    print_table(main, plain, link, args);
    print_gateway_ratios(main, args);
    traces::print_trace_ratios(main, args);
    metrics::print_cost(main, &args.concurrency);
    ai::print_ai_ratios(main, args);
    for c in main
        .iter()
        .chain(plain)
        .chain(link)
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
