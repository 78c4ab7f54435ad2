//! A full disk and a failing disk, injected through [`SimFs`]: a write that meets one
//! gets a clear error (no hang, no panic, nothing half-written), reads keep working, the
//! store says it is read-only, and writes resume on their own once the disk is back.

use std::path::Path;
use std::time::Duration;

use aicore_proto::Code;

use crate::fs::sim::{Fault, SimFs};
use crate::store::{Store, StoreOptions};

const T: &str = "fault.items";

fn options() -> StoreOptions {
    StoreOptions {
        checkpoint_tick: Duration::from_millis(10),
        ..StoreOptions::default()
    }
}

/// Every batch starts a flush into redb: the fault meets redb's file first.
fn flushing() -> StoreOptions {
    StoreOptions {
        wal_bytes: 1,
        ..options()
    }
}

async fn put(s: &Store, key: u32, len: usize) -> Result<(), aicore_proto::Status> {
    s.write(move |tx| {
        tx.put(T, &key.to_be_bytes(), vec![key as u8; len]);
        Ok(())
    })
    .await
}

/// Waits (a bounded number of idle ticks) for the store to say it is writable again.
async fn until_writable(s: &Store) -> bool {
    for _ in 0..1000 {
        if s.write_error().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// `reads`: whether reads are checked while the fault lasts. A fault during a flush
/// into redb leaves redb closed until it can be opened again (opening an uncleanly
/// closed redb file writes to it): reads of what the memory layers do not hold may fail
/// meanwhile.
async fn refused_then_resumed(
    fault: Fault,
    code: Code,
    options: StoreOptions,
    len: usize,
    reads: bool,
) {
    let fs = SimFs::new();
    let path = Path::new("/data/s.redb");
    let s = Store::open_on(fs.clone(), path, options.clone()).unwrap();
    // Both log segments in use and allocated before the fault.
    for key in 0..3 {
        put(&s, key, 10).await.unwrap();
    }
    fs.set_fault(Some(fault));
    // Writes go on into the log's allocated space (a full disk) until it must grow, or
    // (flushing every batch) until redb's file must.
    let mut acked = vec![0, 1, 2];
    let mut refused = None;
    for key in 3..3000 {
        match put(&s, key, len).await {
            Ok(()) => acked.push(key),
            Err(e) => {
                refused = Some((key, e));
                break;
            }
        }
    }
    let (key, e) = refused.expect("a write was refused");
    assert_eq!(e.code, code, "{e:?}");
    let why = s.write_error().expect("the store says it is read-only");
    assert_eq!(why.is_disk_full(), fault == Fault::Full, "{why:?}");
    // Reads keep working; the refused write is not there.
    for k in acked.iter().filter(|_| reads) {
        assert!(s.get(T, &k.to_be_bytes()).unwrap().is_some());
    }
    if reads {
        assert_eq!(s.get(T, &key.to_be_bytes()).unwrap(), None);
    }
    // Still refused while the fault lasts.
    assert_eq!(put(&s, key, 100_000).await.unwrap_err().code, code);
    fs.set_fault(None);
    assert!(
        until_writable(&s).await,
        "writes did not resume on their own"
    );
    put(&s, key, 100_000).await.unwrap();
    acked.push(key);
    // And all of it is durable: the power goes, the store comes back with every
    // acknowledged write.
    let after = fs.cut(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3));
    s.close().await;
    drop(s);
    let s = Store::open_on(after, path, options).unwrap();
    for k in &acked {
        assert!(
            s.get(T, &k.to_be_bytes()).unwrap().is_some(),
            "key {k} lost"
        );
    }
    s.close().await;
}

#[tokio::test]
async fn a_full_disk_refuses_writes_until_space_is_back() {
    refused_then_resumed(
        Fault::Full,
        Code::ResourceExhausted,
        options(),
        100_000,
        true,
    )
    .await;
}

#[tokio::test]
async fn a_full_disk_during_a_flush_refuses_writes_until_space_is_back() {
    refused_then_resumed(
        Fault::Full,
        Code::ResourceExhausted,
        flushing(),
        5_000,
        false,
    )
    .await;
}

#[tokio::test]
async fn a_failing_disk_during_a_flush_refuses_writes_until_it_answers_again() {
    refused_then_resumed(Fault::Eio, Code::Unavailable, flushing(), 5_000, false).await;
}

#[tokio::test]
async fn a_failing_disk_refuses_writes_until_it_answers_again() {
    refused_then_resumed(Fault::Eio, Code::Unavailable, options(), 100_000, true).await;
}

/// The same on a real file system that fills up: `AICORE_SMALL_FS=<a directory on a small
/// file system>` (e.g. `mount -t tmpfs -o size=16m tmpfs /mnt/small`), then
/// `cargo nextest run -p aicore-runtime --run-ignored only a_real_full_disk`.
#[tokio::test]
#[ignore = "needs a small file system in AICORE_SMALL_FS"]
async fn a_real_full_disk_refuses_writes_until_space_is_back() {
    use std::io::Write;
    let dir = std::path::PathBuf::from(std::env::var("AICORE_SMALL_FS").unwrap());
    let path = dir.join("full.redb");
    let options = StoreOptions {
        checkpoint_tick: Duration::from_millis(50),
        ..StoreOptions::default()
    };
    let s = Store::open(&path, options.clone()).unwrap();
    put(&s, 0, 10).await.unwrap();
    // Fill what is left of the file system.
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[1u8; 1 << 16]).is_ok() {}
    drop(f);
    let mut refused = None;
    let mut acked = vec![0];
    for key in 1..1000 {
        match put(&s, key, 100_000).await {
            Ok(()) => acked.push(key),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a write was refused");
    assert_eq!(e.code, Code::ResourceExhausted, "{e:?}");
    assert!(s.write_error().is_some_and(|e| e.is_disk_full()));
    for k in &acked {
        assert!(s.get(T, &k.to_be_bytes()).unwrap().is_some());
    }
    std::fs::remove_file(&filler).unwrap();
    assert!(
        until_writable(&s).await,
        "writes did not resume on their own"
    );
    put(&s, 5000, 100_000).await.unwrap();
    s.close().await;
    drop(s);
    let s = Store::open(&path, options).unwrap();
    for k in acked.iter().chain([&5000]) {
        assert!(
            s.get(T, &k.to_be_bytes()).unwrap().is_some(),
            "key {k} lost"
        );
    }
    s.close().await;
    for f in ["full.redb", "full.redb.wal0", "full.redb.wal1"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// A failed log sync (whose pages Linux may drop, fsyncgate): the batches it covered are
/// refused, writes stay refused while the disk fails, and once it answers the store
/// opens its log again from disk and takes writes again on its own. Every acknowledged
/// write is there, before and after a power cut; the refused ones are absent, the same
/// before and after.
#[tokio::test]
async fn a_failed_log_sync_stops_writes_until_the_log_is_opened_again() {
    let fs = SimFs::new();
    let path = Path::new("/data/s.redb");
    let s = Store::open_on(fs.clone(), path, options()).unwrap();
    let mut acked = Vec::new();
    for key in 0..50 {
        put(&s, key, 100).await.unwrap();
        acked.push(key);
    }
    // Some of it flushed into redb (on an idle tick), the rest only in the log and the
    // memory layers.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while s.flushing() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for key in 50..100 {
        put(&s, key, 100).await.unwrap();
        acked.push(key);
    }
    fs.set_fault(Some(Fault::LogSyncEio));
    let tasks: Vec<_> = (100..110)
        .map(|key| {
            let s = s.clone();
            tokio::spawn(async move { (key, put(&s, key, 100).await) })
        })
        .collect();
    let mut refused = Vec::new();
    for t in tasks {
        let (key, r) = t.await.unwrap();
        match r {
            Ok(()) => panic!("key {key} acknowledged although no sync succeeded"),
            Err(e) => {
                assert_eq!(e.code, Code::Unavailable, "{e:?}");
                refused.push(key);
            }
        }
    }
    // While the disk fails: writes refused, the store says why, reads go on and show
    // nothing refused.
    assert_eq!(put(&s, 500, 10).await.unwrap_err().code, Code::Unavailable);
    assert!(s.write_error().is_some());
    for k in &acked {
        assert!(s.get(T, &k.to_be_bytes()).unwrap().is_some(), "key {k}");
    }
    for k in &refused {
        assert_eq!(s.get(T, &k.to_be_bytes()).unwrap(), None, "key {k}");
    }
    fs.set_fault(None);
    assert!(
        until_writable(&s).await,
        "writes did not resume on their own"
    );
    for key in 200..220 {
        put(&s, key, 100).await.unwrap();
        acked.push(key);
    }
    let check = |s: &Store| {
        for k in &acked {
            assert!(
                s.get(T, &k.to_be_bytes()).unwrap().is_some(),
                "key {k} lost"
            );
        }
        for k in refused.iter().chain([&500]) {
            assert_eq!(s.get(T, &k.to_be_bytes()).unwrap(), None, "key {k} refused");
        }
    };
    check(&s);
    let after = fs.cut(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9));
    s.close().await;
    drop(s);
    let s = Store::open_on(after, path, options()).unwrap();
    check(&s);
    s.close().await;
}
