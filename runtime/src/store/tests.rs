//! The store's unit tests: transactions, caches, the durable backend's crash images,
//! pipelining and failures, recovery refusing damage.

use super::*;
use aicore_proto::Code;
use std::time::{Duration, Instant};

const T: &str = "test.items";

async fn both(test: impl AsyncFn(Store)) {
    test(Store::in_memory()).await;
    let dir = tempfile::tempdir().unwrap();
    test(Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap()).await;
}

#[tokio::test]
async fn failed_closure_writes_nothing_and_others_in_batch_commit() {
    both(async |s: Store| {
        let mut handles = Vec::new();
        for i in 0..50u32 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.write(move |tx| {
                    tx.put(T, &i.to_be_bytes(), vec![1]);
                    if i % 2 == 0 {
                        Err(Status::conflict("even"))
                    } else {
                        Ok(i)
                    }
                })
                .await
            }));
        }
        for (i, h) in handles.into_iter().enumerate() {
            let r = h.await.unwrap();
            assert_eq!(r.is_ok(), i % 2 == 1);
        }
        let rows = s.scan(T, b"", b"", 1000).unwrap();
        assert_eq!(rows.len(), 25);
        assert!(
            rows.iter()
                .all(|(k, _)| u32::from_be_bytes(k[..4].try_into().unwrap()) % 2 == 1)
        );
    })
    .await;
}

#[tokio::test]
async fn panic_in_closure_is_internal_and_writes_nothing() {
    both(async |s: Store| {
        let r: Result<(), Status> = s
            .write(|tx| {
                tx.put(T, b"k", vec![1]);
                panic!("boom")
            })
            .await;
        assert_eq!(r.unwrap_err().code, Code::Internal);
        assert_eq!(s.get(T, b"k").unwrap(), None);
        // The writer survives.
        s.write(|tx| {
            tx.put(T, b"k", vec![2]);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(s.get(T, b"k").unwrap().unwrap().as_ref(), &[2]);
    })
    .await;
}

#[tokio::test]
async fn reads_in_tx_see_own_and_earlier_writes_and_scan_merges() {
    both(async |s: Store| {
        s.write(|tx| {
            tx.put(T, b"a1", vec![1]);
            tx.put(T, b"a2", vec![2]);
            tx.put(T, b"b1", vec![3]);
            Ok(())
        })
        .await
        .unwrap();
        let seen = s
            .write(|tx| {
                tx.delete(T, b"a1");
                tx.put(T, b"a3", vec![4]);
                let got = tx.get(T, b"a3")?;
                let rows = tx.scan(T, b"a", b"", 10)?;
                Ok((got, rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>()))
            })
            .await
            .unwrap();
        assert_eq!(seen.0.unwrap().as_ref(), &[4]);
        assert_eq!(seen.1, vec![b"a2".to_vec(), b"a3".to_vec()]);
        let page = s.scan(T, b"a", b"a3", 10).unwrap();
        assert_eq!(page.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn cache_is_invalidated_on_write() {
    both(async |s: Store| {
        assert_eq!(s.get_cached(T, b"x").unwrap(), None);
        s.write(|tx| {
            tx.put(T, b"x", vec![7]);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(s.get_cached(T, b"x").unwrap().unwrap().as_ref(), &[7]);
        s.write(|tx| {
            tx.delete(T, b"x");
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(s.get_cached(T, b"x").unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn derived_values_are_weighed_by_what_they_hold() {
    // 1 MiB of cache: a quarter for derived values.
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        cache_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let s = Store::open(&dir.path().join("s.redb"), opts).unwrap();
    let write_all = async || {
        s.write(|tx| {
            for i in 0u8..64 {
                tx.put(T, &[i], vec![i]);
            }
            Ok(())
        })
        .await
        .unwrap()
    };
    write_all().await;
    let derive_all = |held: usize| {
        for i in 0u8..64 {
            let v = s
                .get_derived(T, &[i], |raw| Ok(Some((raw[0], held))))
                .unwrap();
            assert_eq!(*v.unwrap(), i);
        }
    };
    // Small values: all of them stay.
    derive_all(100);
    assert_eq!(s.derived_cached(), 64);
    // Values that hold 64 KiB each (say, an object's data): at most 4 fit in 256 KiB.
    write_all().await;
    assert_eq!(s.derived_cached(), 0, "dropped with their rows");
    derive_all(64 << 10);
    let n = s.derived_cached();
    assert!(n <= 4, "{n} derived values of 64 KiB in a 256 KiB share");
}

#[tokio::test]
async fn a_derived_value_is_cached_with_its_key_and_dropped_when_it_is_written() {
    both(async |s: Store| {
        let derived = std::sync::atomic::AtomicUsize::new(0);
        let read = |s: &Store| {
            s.get_derived(T, b"d", |raw| {
                derived.fetch_add(1, Ordering::SeqCst);
                Ok(Some((raw.len(), 8)))
            })
            .unwrap()
            .map(|v| *v)
        };
        assert_eq!(read(&s), None, "no value, nothing derived");
        s.write(|tx| {
            tx.put(T, b"d", vec![1, 2]);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!((read(&s), read(&s)), (Some(2), Some(2)));
        assert_eq!(derived.load(Ordering::SeqCst), 1, "derived once");
        s.write(|tx| {
            tx.put(T, b"d", vec![1, 2, 3]);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(read(&s), Some(3));
        assert_eq!(derived.load(Ordering::SeqCst), 2);
        // A derivation that cannot tell caches nothing.
        let none = s.get_derived(T, b"d", |_| Ok(None::<(u8, usize)>)).unwrap();
        assert!(none.is_none());
        s.write(|tx| {
            tx.delete(T, b"d");
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(read(&s), None);
    })
    .await;
}

#[tokio::test]
async fn committed_writes_survive_reopen_and_close_refuses_more() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        s.write(|tx| {
            tx.put(T, b"durable", vec![9]);
            Ok(())
        })
        .await
        .unwrap();
        s.close().await;
        let r = s.write(|_| Ok(())).await;
        assert_eq!(r.unwrap_err().code, Code::Unavailable);
    }
    let s = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(s.get(T, b"durable").unwrap().unwrap().as_ref(), &[9]);
}

#[tokio::test]
async fn the_store_and_its_log_are_private_in_an_open_directory() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = ["s.redb", "s.redb.wal0", "s.redb.wal1"].map(|f| root.path().join(f));
    let s = Store::open(&files[0], StoreOptions::default()).unwrap();
    s.write(|tx| {
        tx.put(T, b"hash", vec![1]);
        Ok(())
    })
    .await
    .unwrap();
    s.close().await;
    drop(s);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // Files an older version left readable by others are narrowed when opened.
    for f in &files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let s = Store::open(&files[0], StoreOptions::default()).unwrap();
    assert_eq!(s.get(T, b"hash").unwrap().unwrap().as_ref(), &[1]);
    s.close().await;
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // A directory the store creates is private; an existing one keeps its mode.
    let nested = root.path().join("new/s.redb");
    Store::open(&nested, StoreOptions::default())
        .unwrap()
        .close()
        .await;
    assert_eq!(mode(&root.path().join("new")), 0o700);
    assert_eq!(mode(root.path()), 0o755);
}

/// Writes `n` keys (and deletes every third one written before) as separate
/// acknowledged writes, 25 at a time, so that they land in several batches.
async fn write_keys(s: &Store, n: u32) {
    for group in (0..n).collect::<Vec<_>>().chunks(25) {
        let mut handles = Vec::new();
        for &i in group {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.write(move |tx| {
                    tx.put(T, &i.to_be_bytes(), vec![i as u8; 200]);
                    if i % 3 == 0 && i > 0 {
                        tx.delete(T, &(i - 3).to_be_bytes());
                    }
                    Ok(())
                })
                .await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
    }
}

fn expected_keys(s: &Store, n: u32) -> Result<(), String> {
    for i in 0..n {
        let deleted = i % 3 == 0 && i + 3 < n;
        let got = s.get(T, &i.to_be_bytes()).unwrap();
        match (deleted, got) {
            (true, None) => {}
            (false, Some(v)) if v.as_ref() == vec![i as u8; 200].as_slice() => {}
            (d, g) => return Err(format!("key {i}: deleted {d}, got {g:?}")),
        }
    }
    Ok(())
}

fn no_checkpoints() -> StoreOptions {
    StoreOptions {
        checkpoint_tick: Duration::from_secs(3600),
        ..StoreOptions::default()
    }
}

/// Copies the store's files as a crash would leave them: the writer is idle, the
/// logged batches are durable only in the log.
fn crash_image(from: &Path, to: &Path, with_log: bool) {
    std::fs::copy(from.join("s.redb"), to.join("s.redb")).unwrap();
    for segment in ["s.redb.wal0", "s.redb.wal1"] {
        if with_log && from.join(segment).exists() {
            std::fs::copy(from.join(segment), to.join(segment)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_damaged_acknowledged_record_is_refused_until_repaired() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.redb"), no_checkpoints()).unwrap();
    for i in 1..=3u8 {
        s.write(move |tx| {
            tx.put(T, &[i], vec![i; 10]);
            Ok(())
        })
        .await
        .unwrap();
    }
    let image = tempfile::tempdir().unwrap();
    s.between_flushes(|| crash_image(dir.path(), image.path(), true));
    let path = image.path().join("s.redb");
    let report = check(&path, false).unwrap();
    assert_eq!((report.to_apply, report.damage.is_none()), (3, true));
    // Record 2 (64 bytes each: a 32-byte header and this 32-byte body) goes bad
    // after it was acknowledged; record 3, written after, says so.
    let wal = std::fs::OpenOptions::new()
        .write(true)
        .open(image.path().join("s.redb.wal0"))
        .unwrap();
    wal.write_all_at(&[0xff], 64 + 32 + 3).unwrap();
    let refused = Store::open(&path, no_checkpoints()).unwrap_err();
    let StoreError::Corrupt(damage) = &refused else {
        panic!("{refused:?}")
    };
    assert_eq!(damage.file, image.path().join("s.redb.wal0"));
    assert_eq!(damage.offset, Some(64));
    let report = check(&path, false).unwrap();
    assert_eq!((report.to_apply, report.lost.clone()), (1, vec![3]));
    assert!(!report.repaired && report.damage.is_some());
    let report = check(&path, true).unwrap();
    assert!(report.repaired);
    let s = Store::open(&path, no_checkpoints()).unwrap();
    assert_eq!(s.get(T, &[1]).unwrap().unwrap().as_ref(), &[1; 10]);
    assert_eq!(s.get(T, &[2]).unwrap(), None);
    assert_eq!(s.get(T, &[3]).unwrap(), None);
    // Repaired for good: new writes, another crash, the same store.
    s.write(|tx| {
        tx.put(T, &[4], vec![4]);
        Ok(())
    })
    .await
    .unwrap();
    let again = tempfile::tempdir().unwrap();
    s.between_flushes(|| crash_image(image.path(), again.path(), true));
    let s = Store::open(&again.path().join("s.redb"), no_checkpoints()).unwrap();
    assert_eq!(s.get(T, &[4]).unwrap().unwrap().as_ref(), &[4]);
    assert_eq!(s.get(T, &[3]).unwrap(), None);
}

#[tokio::test]
async fn acknowledged_writes_survive_a_crash_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.redb"), no_checkpoints()).unwrap();
    write_keys(&s, 200).await;
    expected_keys(&s, 200).unwrap();
    assert!(s.stats().commits > 1, "{:?}", s.stats());
    // Without its log the crash image lacks the writes: the log is what made them
    // durable, not a durable redb commit.
    let bare = tempfile::tempdir().unwrap();
    crash_image(dir.path(), bare.path(), false);
    let opts = StoreOptions {
        wal: false,
        ..no_checkpoints()
    };
    let r = Store::open(&bare.path().join("s.redb"), opts).unwrap();
    assert_eq!(r.get(T, &1u32.to_be_bytes()).unwrap(), None);
    // With it, every acknowledged write is back, and again after a second reopen.
    let image = tempfile::tempdir().unwrap();
    crash_image(dir.path(), image.path(), true);
    let path = image.path().join("s.redb");
    let r = Store::open(&path, no_checkpoints()).unwrap();
    expected_keys(&r, 200).unwrap();
    // Writes after recovery continue the sequence; they survive another crash too.
    r.write(|tx| {
        tx.put(T, b"after", vec![1]);
        Ok(())
    })
    .await
    .unwrap();
    let again = tempfile::tempdir().unwrap();
    crash_image(image.path(), again.path(), true);
    let r = Store::open(&again.path().join("s.redb"), no_checkpoints()).unwrap();
    expected_keys(&r, 200).unwrap();
    assert_eq!(r.get(T, b"after").unwrap().unwrap().as_ref(), &[1]);
}

#[tokio::test]
async fn a_crash_between_a_flushs_two_commits_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        stage_pause: Duration::from_millis(1500),
        ..no_checkpoints()
    };
    let s = Store::open(&dir.path().join("s.redb"), opts).unwrap();
    write_keys(&s, 200).await;
    // Closing flushes the layer; the flusher then waits between its non-durable
    // commit (pages and checkpoint written, not durable) and the durable one.
    let closing = tokio::spawn({
        let s = s.clone();
        async move { s.close().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let image = tempfile::tempdir().unwrap();
    crash_image(dir.path(), image.path(), true);
    closing.await.unwrap();
    // The database alone is still at the previous (empty) durable state: the
    // non-durable commit's checkpoint is not what a restart reads.
    let bare = tempfile::tempdir().unwrap();
    crash_image(image.path(), bare.path(), false);
    let plain = StoreOptions {
        wal: false,
        ..no_checkpoints()
    };
    let r = Store::open(&bare.path().join("s.redb"), plain).unwrap();
    assert_eq!(r.get(T, &1u32.to_be_bytes()).unwrap(), None);
    r.close().await;
    drop(r);
    // With the log, every acknowledged write is back.
    let r = Store::open(&image.path().join("s.redb"), no_checkpoints()).unwrap();
    expected_keys(&r, 200).unwrap();
}

#[tokio::test]
async fn the_log_is_checkpointed_when_full_and_when_idle() {
    // Full: 20 × 200 writes of ~200 bytes through 4 KiB log segments flush the layer
    // to redb many times; each segment file stays one chunk and everything is there
    // after a crash image and after a close and reopen.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let s = Store::open(
        &path,
        StoreOptions {
            wal_bytes: 4096,
            ..no_checkpoints()
        },
    )
    .unwrap();
    for _ in 0..20 {
        write_keys(&s, 200).await;
        // Readers see every acknowledged write wherever it is: a layer or redb.
        expected_keys(&s, 200).unwrap();
    }
    for segment in ["s.redb.wal0", "s.redb.wal1"] {
        let len = std::fs::metadata(dir.path().join(segment)).unwrap().len();
        assert_eq!(len, 1 << 20, "{segment}");
    }
    // A crash image now (flushes done and in flight, both segments in use) recovers.
    let image = tempfile::tempdir().unwrap();
    crash_image(dir.path(), image.path(), true);
    let r = Store::open(&image.path().join("s.redb"), no_checkpoints()).unwrap();
    expected_keys(&r, 200).unwrap();
    drop(r);
    s.close().await;
    drop(s);
    let s = Store::open(&path, no_checkpoints()).unwrap();
    expected_keys(&s, 200).unwrap();
    drop(s);
    // Idle: with a short tick, a quiet store checkpoints on its own, so even a crash
    // image without the log has the writes.
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        &dir.path().join("s.redb"),
        StoreOptions {
            checkpoint_tick: Duration::from_millis(20),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    write_keys(&s, 50).await;
    let bare = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        crash_image(dir.path(), bare.path(), false);
        let r = Store::open(
            &bare.path().join("s.redb"),
            StoreOptions {
                wal: false,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let found = expected_keys(&r, 50);
        drop(r);
        if found.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no idle checkpoint: {found:?}");
        let _ = std::fs::remove_file(bare.path().join("s.redb"));
    }
}

fn slow_sync() -> StoreOptions {
    StoreOptions {
        sync_pause: Duration::from_millis(300),
        ..no_checkpoints()
    }
}

/// A write of `key` = `value` running on its own task.
fn spawn_put(
    s: &Store,
    key: &'static [u8],
    value: u8,
) -> tokio::task::JoinHandle<Result<(), Status>> {
    let s = s.clone();
    tokio::spawn(async move {
        s.write(move |tx| {
            tx.put(T, key, vec![value]);
            Ok(())
        })
        .await
    })
}

#[tokio::test]
async fn a_batch_is_read_by_the_next_before_it_is_durable_but_not_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.redb"), slow_sync()).unwrap();
    let first = spawn_put(&s, b"k", 1);
    // The first batch is written and waits for its sync; the next batch's closure
    // already reads it (it runs meanwhile, as its own batch) while readers do not.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.get(T, b"k").unwrap(),
        None,
        "readers see only durable writes"
    );
    let reader = s.clone();
    let (in_tx, for_readers) = s
        .write(move |tx| {
            let v = tx.get(T, b"k")?;
            tx.put(T, b"j", vec![2]);
            Ok((v, reader.get(T, b"k")?))
        })
        .await
        .unwrap();
    assert_eq!(in_tx.unwrap().as_ref(), &[1]);
    assert_eq!(for_readers, None);
    // Answered once both are durable, when readers see both.
    first.await.unwrap().unwrap();
    assert_eq!(s.get(T, b"k").unwrap().unwrap().as_ref(), &[1]);
    assert_eq!(s.get(T, b"j").unwrap().unwrap().as_ref(), &[2]);
}

#[tokio::test]
async fn an_answered_batch_is_read_before_it_is_merged_into_the_active_layer() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        settle_pause: Duration::from_millis(300),
        ..no_checkpoints()
    };
    let s = Store::open(&dir.path().join("s.redb"), opts).unwrap();
    spawn_put(&s, b"k1", 1).await.unwrap().unwrap();
    // Answered; the syncer is still holding the batch in its recent list. Readers,
    // scans and the next batch's closures all see it.
    assert_eq!(s.get(T, b"k1").unwrap().unwrap().as_ref(), &[1]);
    let rows = s.scan(T, b"k", b"", 10).unwrap();
    assert_eq!(rows, vec![(b"k1".to_vec(), Bytes::from_static(&[1]))]);
    let (seen, scanned) = s
        .write(|tx| {
            let v = tx.get(T, b"k1")?;
            tx.put(T, b"k2", vec![2]);
            Ok((v, tx.scan(T, b"k", b"", 10)?.len()))
        })
        .await
        .unwrap();
    assert_eq!((seen.unwrap().as_ref(), scanned), (&[1u8][..], 2));
    // Merged later, the same to readers.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.scan(T, b"k", b"", 10).unwrap().len(), 2);
    assert_eq!(s.get(T, b"k2").unwrap().unwrap().as_ref(), &[2]);
}

#[tokio::test]
async fn what_a_read_only_closure_saw_is_durable_before_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.redb"), slow_sync()).unwrap();
    let writer = spawn_put(&s, b"k", 7);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = s.write(|tx| tx.get(T, b"k")).await.unwrap();
    assert_eq!(seen.unwrap().as_ref(), &[7]);
    // Its reply may say what it read only because that is durable now.
    assert_eq!(s.get(T, b"k").unwrap().unwrap().as_ref(), &[7]);
    writer.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failed_sync_fails_its_batches_until_the_log_is_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let s = Store::open(&path, slow_sync()).unwrap();
    s.write(|tx| {
        tx.put(T, b"before", vec![1]);
        Ok(())
    })
    .await
    .unwrap();
    s.fail_next_sync();
    let mut pending = Vec::new();
    for key in [b"0", b"1", b"2"] {
        pending.push(spawn_put(&s, key, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in pending {
        assert_eq!(p.await.unwrap().unwrap_err().code, Code::Unavailable);
    }
    // Not one of them became visible.
    for key in [b"0", b"1", b"2"] {
        assert_eq!(s.get(T, key).unwrap(), None);
    }
    // The store opens its log again from disk and takes writes again on its own; the
    // refused batches (on disk here: only the answer failed) stay dropped.
    let mut later = Err(Status::conflict("not tried"));
    for _ in 0..1000 {
        later = s
            .write(|tx| {
                tx.put(T, b"later", vec![1]);
                Ok(())
            })
            .await;
        if later.is_ok() {
            break;
        }
        assert_eq!(later.as_ref().unwrap_err().code, Code::Unavailable);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    later.unwrap();
    for key in [b"0", b"1", b"2"] {
        assert_eq!(s.get(T, key).unwrap(), None);
    }
    assert_eq!(s.get(T, b"before").unwrap().unwrap().as_ref(), &[1]);
    s.close().await;
    drop(s);
    // A restart finds the same.
    let s = Store::open(&path, no_checkpoints()).unwrap();
    assert_eq!(s.get(T, b"before").unwrap().unwrap().as_ref(), &[1]);
    assert_eq!(s.get(T, b"later").unwrap().unwrap().as_ref(), &[1]);
    for key in [b"0", b"1", b"2"] {
        assert_eq!(s.get(T, key).unwrap(), None);
    }
    s.write(|tx| {
        tx.put(T, b"after", vec![1]);
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn without_the_log_every_batch_is_a_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        wal: false,
        ..no_checkpoints()
    };
    let s = Store::open(&dir.path().join("s.redb"), opts.clone()).unwrap();
    write_keys(&s, 100).await;
    assert!(!dir.path().join("s.redb.wal0").exists());
    let bare = tempfile::tempdir().unwrap();
    crash_image(dir.path(), bare.path(), false);
    let r = Store::open(&bare.path().join("s.redb"), opts).unwrap();
    expected_keys(&r, 100).unwrap();
}

#[tokio::test]
async fn events_are_queued_only_with_their_commit_in_order() {
    use crate::outbox::{Emit, OUTBOX, OutboxEvent};
    both(async |s: Store| {
        let queued = s.watch(OUTBOX);
        let r: Result<(), Status> = s
            .write(|tx| {
                tx.emit_raw("evt.test.a", vec![1])?;
                Err(Status::conflict("refused"))
            })
            .await;
        assert!(r.is_err());
        assert!(s.scan(OUTBOX, b"", b"", 10).unwrap().is_empty());
        for i in 0..3u8 {
            s.write(move |tx| {
                tx.put(T, &[i], vec![i]);
                tx.emit_raw("evt.test.b", vec![i])
            })
            .await
            .unwrap();
        }
        // The relay is signalled (the permit is stored even though nobody waited).
        tokio::time::timeout(std::time::Duration::from_secs(5), queued.notified())
            .await
            .expect("signalled");
        let rows = s.scan(OUTBOX, b"", b"", 10).unwrap();
        let events: Vec<OutboxEvent> = rows
            .into_iter()
            .map(|(_, v)| decode(OUTBOX, v).unwrap())
            .collect();
        assert_eq!(
            events.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let ids: std::collections::HashSet<_> = events.iter().map(|e| e.msg_id.clone()).collect();
        assert_eq!(ids.len(), 3);
    })
    .await;
}

#[tokio::test]
async fn batches_that_write_nothing_make_no_commit() {
    both(async |s: Store| {
        let before = s.stats();
        let _ = s.write(|_| Err::<(), _>(Status::conflict("no"))).await;
        s.write(|tx| tx.get(T, b"nothing").map(|_| ()))
            .await
            .unwrap();
        let after = s.stats();
        assert_eq!(after.writes, before.writes + 2);
        assert_eq!(after.commits, before.commits);
        s.write(|tx| {
            tx.put(T, b"one", vec![1]);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(s.stats().commits, before.commits + 1);
    })
    .await;
}
