//! The printed table: every row on the default (mTLS) server beside its raw baseline and,
//! when it ran, its plaintext twin.

use super::load::Cell;
use super::{BenchArgs, RAW, RAW_TLS};

/// A cell's throughput as a share of the raw slices interleaved with it.
pub(super) fn share(c: &Cell) -> Option<f64> {
    c.raw_rps.filter(|r| *r > 0.0).map(|r| c.rps / r)
}

/// Prints the table: every row on the default (mTLS) server, its share of the raw
/// baseline on the same server, and, when the plaintext run exists, the same row there
/// and the TLS row's throughput as a share of the plaintext one. The two runs are minutes
/// apart, so that share is computed from ratios taken within each run: (row / raw) on
/// mTLS × (raw mTLS / raw plaintext, interleaved) ÷ (row / raw) on plaintext; for the raw
/// row it is the interleaved ratio itself.
pub(super) fn print_table(cells: &[Cell], plain: &[Cell], link: &[Cell], args: &BenchArgs) {
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
