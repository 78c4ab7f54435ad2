//! The model-checked power-cut test: random workloads (puts, deletes, multi-key
//! transactions, concurrent batches, log rollovers and flushes into redb, idle
//! checkpoints, new stores) run against a model; the power is cut at random points
//! through [`SimFs`] (unsynced writes dropped whole, torn or kept, in any order, file
//! creations undone), the store is reopened from what the disk kept, and then
//! - every acknowledged write is there,
//! - a transaction not acknowledged is there entirely or not at all,
//! - a scan of the table agrees with reads of each key (the store is consistent),
//!
//! and the workload goes on against the reopened store. Seeded: a failure prints its
//! seed and cut; `AICORE_CRASH_SEED` replays it (the store's threads still interleave
//! as they will, so the exact bytes at the cut can differ), `AICORE_CRASH_CUTS` runs
//! more cuts than the default (which keeps `cargo nextest` quick).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aicore_proto::Status;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fs::sim::SimFs;
use crate::store::{Store, StoreOptions};

const T: &str = "crash.items";
const KEYS: u8 = 24;

/// One transaction: for each key, the value it writes (`None`: a delete).
type Txn = Vec<(u8, Option<Vec<u8>>)>;

fn options(wal: bool) -> StoreOptions {
    StoreOptions {
        wal,
        // Small segments: a flush into redb and a switch of segments every few rounds.
        wal_bytes: 2 << 10,
        redb_cache_bytes: 1 << 20,
        checkpoint_tick: Duration::from_millis(10),
        ..StoreOptions::default()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A round's transactions: each on its own keys (so their order does not matter).
fn round(rng: &mut StdRng, id: &mut u64) -> Vec<Txn> {
    let mut keys: Vec<u8> = (0..KEYS).collect();
    let mut txns = Vec::new();
    for _ in 0..rng.random_range(1..=6) {
        let n = rng.random_range(1..=3).min(keys.len());
        let mut txn = Txn::new();
        for _ in 0..n {
            let k = keys.swap_remove(rng.random_range(0..keys.len()));
            *id += 1;
            let value = rng
                .random_bool(0.8)
                .then(|| [&id.to_le_bytes()[..], &vec![k; rng.random_range(0..200)]].concat());
            txn.push((k, value));
        }
        txns.push(txn);
        if keys.is_empty() {
            break;
        }
    }
    txns
}

async fn write(s: Store, txn: Txn) -> Result<(), Status> {
    s.write(move |tx| {
        for (k, v) in txn {
            match v {
                Some(v) => tx.put(T, &[k], v),
                None => tx.delete(T, &[k]),
            }
        }
        Ok(())
    })
    .await
}

/// The store's contents, read key by key and checked against a scan.
fn contents(s: &Store) -> BTreeMap<u8, Vec<u8>> {
    let mut by_get = BTreeMap::new();
    for k in 0..KEYS {
        if let Some(v) = s.get(T, &[k]).unwrap() {
            by_get.insert(k, v.to_vec());
        }
    }
    let by_scan: BTreeMap<u8, Vec<u8>> = s
        .scan(T, b"", b"", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k[0], v.to_vec()))
        .collect();
    assert_eq!(by_get, by_scan, "reads and a scan disagree after recovery");
    by_get
}

fn apply(model: &mut BTreeMap<u8, Vec<u8>>, txn: &Txn) {
    for (k, v) in txn {
        match v {
            Some(v) => model.insert(*k, v.clone()),
            None => model.remove(k),
        };
    }
}

/// Runs `cuts` power cuts from `seed`; panics with the seed and cut on a violation.
async fn run(seed: u64, cuts: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let path = Path::new("/data/store.redb");
    let mut id = 0u64;
    let mut fs = SimFs::new();
    let mut wal = true;
    let mut model = BTreeMap::new();
    let mut store = Store::open_on(fs.clone(), path, options(wal)).unwrap();
    for cut in 0..cuts {
        let ctx = format!("seed {seed}, cut {cut}");
        // Some rounds run to completion, then one is cut while in flight.
        for _ in 0..rng.random_range(0..6) {
            for (txn, r) in round(&mut rng, &mut id)
                .into_iter()
                .map(|t| (t.clone(), tokio::spawn(write(store.clone(), t))))
                .collect::<Vec<_>>()
            {
                r.await.unwrap().unwrap_or_else(|e| panic!("{ctx}: {e}"));
                apply(&mut model, &txn);
            }
        }
        let txns = round(&mut rng, &mut id);
        let handles: Vec<_> = txns
            .iter()
            .map(|t| tokio::spawn(write(store.clone(), t.clone())))
            .collect();
        let waited = rng.random_range(0..=handles.len());
        let mut acked = vec![None; handles.len()];
        let mut handles = handles.into_iter().enumerate();
        for (i, h) in handles.by_ref().take(waited) {
            acked[i] = Some(h.await.unwrap().is_ok());
        }
        if rng.random_bool(0.5) {
            std::thread::sleep(Duration::from_micros(rng.random_range(0..300)));
        }
        let after = fs.cut(&mut rng);
        for (i, h) in handles {
            acked[i] = Some(h.await.unwrap().is_ok());
        }
        store.close().await;
        drop(store);
        fs = after;
        // Now and then a new store (its files not yet in a synced directory), and now
        // and then one without the log.
        let fresh = rng.random_ratio(1, 8);
        if fresh {
            fs = SimFs::new();
            model.clear();
            wal = !rng.random_ratio(1, 4);
        }
        store = Store::open_on(fs.clone(), path, options(wal))
            .unwrap_or_else(|e| panic!("{ctx}: reopening after the cut: {e:?}"));
        let got = contents(&store);
        // Acknowledged transactions of the cut round are in; each of the others is in
        // entirely or not at all.
        let before = model.clone();
        for (txn, acked) in txns.iter().zip(&acked).filter(|_| !fresh) {
            let mut with = before.clone();
            apply(&mut with, txn);
            let present = txn.iter().map(|(k, _)| got.get(k) == with.get(k));
            let absent = txn.iter().map(|(k, _)| got.get(k) == before.get(k));
            let (all_in, none_in) = (present.clone().all(|p| p), absent.clone().all(|a| a));
            assert!(
                all_in || (none_in && *acked != Some(true)),
                "{ctx}: transaction {txn:?} (acknowledged: {acked:?}) is {}",
                if none_in { "lost" } else { "half-present" }
            );
            if all_in {
                apply(&mut model, txn);
            }
        }
        assert_eq!(got, model, "{ctx}: the store differs from the model");
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_cuts() {
    let seed = env_u64("AICORE_CRASH_SEED").unwrap_or(0x00c0_ffee);
    let cuts = env_u64("AICORE_CRASH_CUTS").unwrap_or(150);
    run(seed, cuts).await;
}

#[tokio::test]
async fn a_new_store_survives_a_power_cut() {
    // The first writes to a new store, then the power goes: their files must exist.
    let mut rng = StdRng::seed_from_u64(env_u64("AICORE_CRASH_SEED").unwrap_or(1));
    let path = Path::new("/data/store.redb");
    for i in 0..40 {
        let fs = SimFs::new();
        let s = Store::open_on(fs.clone(), path, options(true)).unwrap();
        write(s.clone(), vec![(1, Some(vec![i]))]).await.unwrap();
        let after = fs.cut(&mut rng);
        s.close().await;
        drop(s);
        let s = Store::open_on(after, path, options(true)).unwrap();
        assert_eq!(
            s.get(T, &[1]).unwrap().as_deref(),
            Some(&[i][..]),
            "cut {i}: an acknowledged write to a new store was lost"
        );
        s.close().await;
    }
}

/// How long opening the store takes with a full log (64 MiB of records newer than the
/// checkpoint) to apply. A measurement, not a check: run it in a release build,
/// `cargo nextest run --release -p aicore-runtime --run-ignored only --no-capture
/// recovery_of_a_full_log`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; see its doc comment"]
async fn recovery_of_a_full_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let options = StoreOptions {
        wal_bytes: 80 << 20,
        checkpoint_tick: Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    let s = Store::open(&path, options.clone()).unwrap();
    // Batches of 1,000 puts of 16-byte random keys and 128-byte values: 165 bytes an
    // op, 406 batches ≈ 64 MiB of log.
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..406 {
        let rows: Vec<([u8; 16], [u8; 128])> =
            (0..1000).map(|_| (rng.random(), [7; 128])).collect();
        s.write(move |tx| {
            for (k, v) in rows {
                tx.put("test.items", &k, v.to_vec());
            }
            Ok(())
        })
        .await
        .unwrap();
    }
    let image = tempfile::tempdir().unwrap();
    s.between_flushes(|| {
        for f in ["s.redb", "s.redb.wal0", "s.redb.wal1"] {
            std::fs::copy(dir.path().join(f), image.path().join(f)).unwrap();
        }
    });
    s.close().await;
    let log = std::fs::metadata(image.path().join("s.redb.wal0"))
        .unwrap()
        .len();
    let started = std::time::Instant::now();
    let s = Store::open(&image.path().join("s.redb"), options).unwrap();
    let took = started.elapsed();
    println!(
        "recovery of a full log ({} MiB segment, 406,000 puts): {took:?}",
        log >> 20
    );
    assert_eq!(s.scan("test.items", b"", b"", 5).unwrap().len(), 5);
    s.close().await;
}
