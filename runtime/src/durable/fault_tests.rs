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

async fn refused_then_resumed(fault: Fault, code: Code) {
    let fs = SimFs::new();
    let path = Path::new("/data/s.redb");
    let s = Store::open_on(fs.clone(), path, options()).unwrap();
    put(&s, 0, 10).await.unwrap();
    fs.set_fault(Some(fault));
    // Writes go on into the log's allocated space (a full disk) until it must grow.
    let mut acked = vec![0];
    let mut refused = None;
    for key in 1..100 {
        match put(&s, key, 100_000).await {
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
    for k in &acked {
        assert!(s.get(T, &k.to_be_bytes()).unwrap().is_some());
    }
    assert_eq!(s.get(T, &key.to_be_bytes()).unwrap(), None);
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
    let s = Store::open_on(after, path, options()).unwrap();
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
    refused_then_resumed(Fault::Full, Code::ResourceExhausted).await;
}

#[tokio::test]
async fn a_failing_disk_refuses_writes_until_it_answers_again() {
    refused_then_resumed(Fault::Eio, Code::Unavailable).await;
}
