//! `aicore`: the appliance's one binary. This file only parses the command line, sets up
//! the async runtime and the TLS crypto provider, and hands each subcommand to its
//! function in [`commands`] (`bench` to the benchmark).

mod bench;
mod certs;
mod certs_audit;
mod cli;
mod commands;
mod config;
mod files;
mod gateway;
mod json;
mod nats_child;
mod notify;
mod otlp;
mod runtime_file;
mod security;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::Config;

/// mimalloc, not glibc's malloc: request buffers are allocated on tokio's workers and
/// freed on the store's threads (and the other way round), where glibc's per-arena
/// frees and consolidation took about a tenth of both cores in a profile of the durable
/// Put path; with mimalloc that row ran 8 % faster in alternating runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// AI Core: a self-hosted game backend appliance.
#[derive(Parser)]
#[command(name = "aicore", version, about)]
struct Cli {
    /// Configuration file (default: ./aicore.toml if present, else built-in defaults).
    #[arg(long, global = true, env = "AICORE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the appliance: nats-server child, store, domains, HTTP gateway. Stops on
    /// SIGTERM/SIGINT.
    Run(commands::RunArgs),
    /// Call one RPC with a JSON request; prints the JSON reply. Exit 1 and the error on
    /// stderr when the service refuses, 2 when the command is wrong.
    Call(commands::CallArgs),
    /// Show which domains answer; exit 0 only when every configured domain does.
    Status(commands::StatusArgs),
    /// Measure request/reply throughput and latency against a raw NATS baseline.
    Bench(bench::BenchArgs),
    /// Manage the appliance's certificates (its local CA under `<data-dir>/certs`).
    Certs {
        #[command(flatten)]
        place: commands::Place,
        #[command(subcommand)]
        command: commands::CertsCommand,
    },
    /// Print the default configuration as TOML.
    DefaultConfig,
    /// Check or repair the store's files (with the appliance stopped).
    Store {
        #[command(flatten)]
        place: commands::Place,
        #[command(subcommand)]
        command: commands::StoreCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Bench(_)) {
        quiet_broken_pipe();
    }
    // One crypto provider for the whole process (rustls would otherwise have to guess).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Without the LIFO slot a task woken by another runs after the tasks already queued,
    // not right after the waker. On a connection shared by many callers (the load
    // generator, the gateway, every domain's replies) that lets the woken callers queue
    // their messages before the connection task writes, so one `writev` carries many of
    // them instead of about one. Measured (BENCHMARKS.md, 2026-12-01 16:20): raw
    // request/reply at C=64 +30 %, cached Get at C=128 +35 %, durable Put at C=64
    // +5–15 %, the gateway at C=64/128 +15 %; one caller alone (C=1) pays ~15 µs more
    // per call. `tokio_unstable` is set in `.cargo/config.toml`; a build without it
    // keeps tokio's default.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Dropping the runtime would wait for every blocking task still running (a password
    // hash, a file operation on a stuck disk); the process is done, so wait briefly only.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The client commands print for a reader that may stop early (`aicore status | head`).
/// Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE and `println!`
/// panics; a command-line tool is expected to end quietly instead, as `cat` does: with the
/// default disposition the kernel ends the process with SIGPIPE (status 141 in a shell),
/// without a message. Only for the client commands: the server (`run`, `bench`) keeps
/// SIGPIPE ignored, so a peer that goes away is an error on one socket, never the end of
/// the process (its sockets write with MSG_NOSIGNAL anyway).
fn quiet_broken_pipe() {
    // SAFETY: signal(2) with SIG_DFL, before any thread is started; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run(args) => commands::run(config, args).await,
        Command::Call(args) => commands::call(config, args).await,
        Command::Status(args) => commands::status(config, args).await,
        Command::Bench(args) => {
            init_logging("warn");
            bench::run(config, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs { place, command } => commands::certs(config, place, command).await,
        Command::Store { place, command } => commands::store(config, place, command),
        Command::DefaultConfig => {
            print!("{}", toml::to_string(&Config::default())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
