//! The `metrics` rows: what recording metrics costs on the hot path. The same load runs
//! with the registry's switch off and on, in turns with each other and with the raw
//! baseline slice by slice (each call sets the switch its row wants, so a slice of one
//! row never records and a slice of the other always does): a cached state-manager Get
//! through the runtime (per-RPC counters and histogram, store cache counters) and the
//! gateway row (its per-route rows; the stub behind it records nothing). The ratio
//! on/off is printed per concurrency.

use aicore_proto::aicore::state_manager::v1::StateManagerClient;
use aicore_runtime::metrics::Switch;

use super::load::*;

/// Row names of the metrics-off/on pairs.
pub(super) const GET_OFF: &str = "sdk state_manager.get (cached), metrics off";
pub(super) const GET_ON: &str = "sdk state_manager.get (cached), metrics on";
pub(super) const GATEWAY_OFF: &str = "http gateway, metrics off";
pub(super) const GATEWAY_ON: &str = "http gateway, metrics on";

/// A load that sets `switch` to `on` before each call of `call`.
pub(super) fn switched(switch: &Switch, on: bool, call: Op) -> Op {
    let switch = switch.clone();
    std::sync::Arc::new(move |w, i| {
        switch.set(on);
        call(w, i)
    })
}

/// The cached Get with metrics off and on, at every concurrency.
pub(super) async fn measure_get(
    base: &Baseline,
    client: &StateManagerClient<aicore_sdk::Client>,
    switch: &Switch,
    concurrency: &[usize],
    seconds: f64,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    let get = {
        let client = client.clone();
        op(move |_, _| super::state::get_hot(client.clone()))
    };
    let was = switch.on();
    for &c in concurrency {
        let rows = vec![
            (GET_OFF, switched(switch, false, get.clone())),
            (GET_ON, switched(switch, true, get.clone())),
        ];
        cells.extend(measure_rows(base, None, c, seconds, rows).await);
    }
    switch.set(was);
    cells
}

/// Metrics-on throughput as a share of metrics-off, per pair and concurrency.
pub(super) fn print_cost(cells: &[Cell], concurrency: &[usize]) {
    let rps = |name: &str, c: usize| {
        cells
            .iter()
            .find(|x| x.name == name && x.concurrency == c)
            .map(|x| x.rps)
    };
    for (what, off, on) in [
        ("cached Get", GET_OFF, GET_ON),
        ("gateway", GATEWAY_OFF, GATEWAY_ON),
    ] {
        for &c in concurrency {
            if let (Some(off), Some(on)) = (rps(off, c), rps(on, c))
                && off > 0.0
            {
                println!(
                    "metrics on vs off, {what} at C={c}: {:.1}% ({:.0} vs {:.0} req/s)",
                    100.0 * on / off,
                    on,
                    off
                );
            }
        }
    }
}
