//! What traces cost on the hot path: the cached Get and the gateway rows again with every
//! span recorded and exported over OTLP/HTTP (JSON) to a collector in this process that
//! reads and discards each batch, in the same run as the rows without traces. Both are
//! ratios to the raw slices interleaved with them, so the comparison is of those ratios.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use axum::routing::post;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::BenchArgs;
use super::http::HTTP_GATEWAY;
use super::load::Cell;
use crate::otlp::{self, TracesConfig};

/// The cached Get row with traces exported.
pub(super) const TRACED_GET: &str = "sdk state_manager.get (cached, traces exported)";
/// The gateway row with traces exported.
pub(super) const TRACED_GATEWAY: &str = "http gateway (traces exported)";
/// The cached Get row without.
pub(super) const GET: &str = "sdk state_manager.get (cached)";

/// Bytes the in-process collector received.
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static STARTED: OnceLock<()> = OnceLock::new();

/// Starts the discarding collector and the exporter once per process, recording off;
/// [`Recording`] turns it on for a row.
pub(super) async fn start_once(stop: CancellationToken) -> Result<()> {
    if STARTED.get().is_some() {
        return Ok(());
    }
    let app = axum::Router::new().route(
        "/v1/traces",
        post(|body: Bytes| async move {
            RECEIVED.fetch_add(body.len() as u64, Ordering::Relaxed);
            "{}"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the bench's trace collector")?;
    let addr = listener.local_addr()?;
    let serving = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { serving.cancelled().await })
            .await;
    });
    let config = TracesConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..TracesConfig::default()
    };
    otlp::start(&config, stop)?;
    aicore_runtime::trace::set_recording(false);
    let _ = STARTED.set(());
    Ok(())
}

/// Spans are recorded while this lives.
pub(super) struct Recording;

impl Recording {
    pub(super) fn on() -> Recording {
        aicore_runtime::trace::set_recording(true);
        Recording
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        aicore_runtime::trace::set_recording(false);
    }
}

/// Renames the gateway cells of a traced run.
pub(super) fn traced(mut cells: Vec<Cell>) -> Vec<Cell> {
    cells.retain(|c| c.name == HTTP_GATEWAY);
    for c in &mut cells {
        c.name = TRACED_GATEWAY;
    }
    cells
}

/// Prints each traced row's share of raw as a share of the untraced row's.
pub(super) fn print_trace_ratios(cells: &[Cell], args: &BenchArgs) {
    let share = |name: &str, c: usize| {
        cells
            .iter()
            .find(|x| x.name == name && x.concurrency == c)
            .and_then(super::table::share)
    };
    for &c in &args.concurrency {
        for (with, without) in [(TRACED_GET, GET), (TRACED_GATEWAY, HTTP_GATEWAY)] {
            if let (Some(w), Some(o)) = (share(with, c), share(without, c))
                && o > 0.0
            {
                println!(
                    "{without} with traces exported at C={c}: {:.1}% of its throughput without",
                    100.0 * w / o
                );
            }
        }
    }
    let received = RECEIVED.load(Ordering::Relaxed);
    if received > 0 {
        println!(
            "trace collector received {:.1} MiB of OTLP JSON; spans dropped by the full queue: {}",
            received as f64 / (1024.0 * 1024.0),
            aicore_runtime::trace::dropped()
        );
    }
}
