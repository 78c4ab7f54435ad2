//! The durable backend against the in-memory one as a model: random sessions of writes
//! (puts, deletes, reads inside the transaction, refusals), reads and scans from outside,
//! crash images and clean reopens, with log segments small enough that layers freeze and
//! flush to redb all through the session, must read the same at every step.

use super::*;
use proptest::prelude::*;
use std::time::Duration;

const TABLES: [&str; 2] = ["model.a", "model.b"];

#[derive(Debug, Clone)]
enum Step {
    /// A write closure: ops of (table, key, value or delete); refused if `refuse`.
    Write {
        ops: Vec<(usize, u8, Option<u8>)>,
        refuse: bool,
    },
    /// Several write closures at once (one or more batches).
    Concurrent(Vec<Vec<(usize, u8, Option<u8>)>>),
    Get(usize, u8),
    Scan {
        table: usize,
        prefix: u8,
        from: u8,
        limit: usize,
    },
    Crash,
    Reopen,
    Idle,
}

fn key(k: u8) -> Vec<u8> {
    // Two-byte keys with a shared first byte for some, so prefixes select ranges.
    vec![k / 8, k % 8]
}

fn ops() -> impl Strategy<Value = Vec<(usize, u8, Option<u8>)>> {
    proptest::collection::vec(
        (0..2usize, 0..40u8, proptest::option::of(any::<u8>())),
        1..6,
    )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (ops(), proptest::bool::weighted(0.15))
            .prop_map(|(ops, refuse)| Step::Write { ops, refuse }),
        2 => proptest::collection::vec(ops(), 2..8).prop_map(Step::Concurrent),
        3 => (0..2usize, 0..40u8).prop_map(|(t, k)| Step::Get(t, k)),
        3 => (0..2usize, 0..6u8, 0..8u8, 1..12usize).prop_map(|(table, prefix, from, limit)| {
            Step::Scan { table, prefix, from, limit }
        }),
        1 => Just(Step::Crash),
        1 => Just(Step::Reopen),
        1 => Just(Step::Idle),
    ]
}

/// Runs one closure's ops on `tx` and returns what its reads saw.
fn apply(tx: &mut Tx<'_>, ops: &[(usize, u8, Option<u8>)]) -> Result<Vec<String>, Status> {
    let mut seen = Vec::new();
    for (t, k, v) in ops {
        let table = TABLES[*t];
        seen.push(format!("{:?}", tx.get(table, &key(*k))?));
        match v {
            Some(v) => tx.put(table, &key(*k), vec![*v; 1 + *v as usize % 50]),
            None => tx.delete(table, &key(*k)),
        }
        seen.push(format!("{:?}", tx.scan(table, &[k / 8], &[], 5)?));
    }
    Ok(seen)
}

async fn write(s: &Store, ops: Vec<(usize, u8, Option<u8>)>, refuse: bool) -> String {
    let r = s
        .write(move |tx| {
            let seen = apply(tx, &ops)?;
            if refuse {
                return Err(Status::conflict("refused"));
            }
            Ok(seen)
        })
        .await;
    format!("{r:?}")
}

fn options() -> StoreOptions {
    StoreOptions {
        wal_bytes: 2048,
        checkpoint_tick: Duration::from_millis(5),
        flush_pause: Duration::from_millis(25),
        sync_pause: Duration::from_millis(2),
        ..StoreOptions::default()
    }
}

async fn session(steps: Vec<Step>) {
    let model = Store::in_memory();
    let mut dir = tempfile::tempdir().unwrap();
    let mut real = Store::open(&dir.path().join("s.redb"), options()).unwrap();
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Write { ops, refuse } => {
                let a = write(&model, ops.clone(), refuse).await;
                let b = write(&real, ops, refuse).await;
                assert_eq!(a, b, "step {i}: write");
            }
            Step::Concurrent(groups) => concurrent(&model, &real, groups, i).await,
            Step::Get(t, k) => {
                let a = model.get(TABLES[t], &key(k)).unwrap();
                let b = real.get(TABLES[t], &key(k)).unwrap();
                assert_eq!(a, b, "step {i}: get");
            }
            Step::Scan {
                table,
                prefix,
                from,
                limit,
            } => {
                let (p, f) = ([prefix], [prefix, from]);
                let a = model.scan(TABLES[table], &p, &f, limit).unwrap();
                let b = real.scan(TABLES[table], &p, &f, limit).unwrap();
                assert_eq!(a, b, "step {i}: scan");
                let a = model.scan(TABLES[table], &[], &[prefix], limit).unwrap();
                let b = real.scan(TABLES[table], &[], &[prefix], limit).unwrap();
                assert_eq!(a, b, "step {i}: scan from");
            }
            Step::Crash | Step::Reopen => {
                (real, dir) = restart(real, dir, matches!(step, Step::Crash)).await;
            }
            Step::Idle => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    for t in TABLES {
        assert_eq!(
            model.scan(t, &[], &[], 1000).unwrap(),
            real.scan(t, &[], &[], 1000).unwrap(),
            "end state of {t}"
        );
    }
}

/// Several write closures at once (one or more batches) on both stores (`i`: the step).
async fn concurrent(
    model: &Store,
    real: &Store,
    groups: Vec<Vec<(usize, u8, Option<u8>)>>,
    i: usize,
) {
    // Each closure writes its own keys (k mod the number of closures), so
    // any commit order gives the same end state; both stores must reach it.
    let n = groups.len();
    let mut handles = Vec::new();
    for (g, ops) in groups.into_iter().enumerate() {
        let ops: Vec<_> = ops
            .into_iter()
            .filter(|(_, k, _)| *k as usize % n == g)
            .collect();
        for s in [model.clone(), real.clone()] {
            let ops = ops.clone();
            handles.push(tokio::spawn(async move {
                s.write(move |tx| {
                    for (t, k, v) in &ops {
                        match v {
                            Some(v) => tx.put(TABLES[*t], &key(*k), vec![*v]),
                            None => tx.delete(TABLES[*t], &key(*k)),
                        }
                    }
                    Ok(())
                })
                .await
            }));
        }
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    for table in TABLES {
        assert_eq!(
            model.scan(table, &[], &[], 1000).unwrap(),
            real.scan(table, &[], &[], 1000).unwrap(),
            "step {i}: after concurrent writes to {table}"
        );
    }
}

/// Closes the durable store in `dir` and opens it again from a copy of its files in a
/// new folder: what a kill left (`crash`) or what a clean close left.
async fn restart(real: Store, dir: tempfile::TempDir, crash: bool) -> (Store, tempfile::TempDir) {
    let next = tempfile::tempdir().unwrap();
    if crash {
        // What a kill at this instant leaves: the files as they are, a
        // flush pending or not, layers lost.
        real.between_flushes(|| {
            for f in ["s.redb", "s.redb.wal0", "s.redb.wal1"] {
                if dir.path().join(f).exists() {
                    std::fs::copy(dir.path().join(f), next.path().join(f)).unwrap();
                }
            }
        });
    }
    real.close().await;
    drop(real);
    if !crash {
        for f in ["s.redb", "s.redb.wal0", "s.redb.wal1"] {
            if dir.path().join(f).exists() {
                std::fs::copy(dir.path().join(f), next.path().join(f)).unwrap();
            }
        }
    }
    drop(dir);
    let real = Store::open(&next.path().join("s.redb"), options()).unwrap();
    (real, next)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_durable_store_reads_like_the_model(steps in proptest::collection::vec(step(), 1..60)) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(session(steps));
    }
}
