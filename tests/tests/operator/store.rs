//! `aicore store check` and `aicore store repair` on a real appliance's data directory:
//! a crash's torn tail is cut away (exit 0); a damaged record before records
//! written after it was acknowledged is corruption — `check` names the file and exits
//! non-zero, the appliance refuses to start, `repair` drops what the damage makes
//! unusable and says so — and the appliance then starts and serves what was written.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::CallOptions;
use aicore_proto::aicore::world_state::v1 as ws;
use bytes::Bytes;

use super::aicore;

type World = ws::WorldStateClient<aicore_sdk::Client>;

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(10))
}

async fn set(world: &World, key: &str, data: &str) {
    world
        .set(
            ws::SetRequest {
                key: key.into(),
                data: Bytes::from(data.to_string()),
                content_type: "text/plain".into(),
                expected_version: None,
                idempotency_key: String::new(),
            },
            &opts(),
        )
        .await
        .unwrap();
}

async fn facts(world: &World, prefix: &str) -> Vec<String> {
    let snap = world
        .snapshot(
            ws::SnapshotRequest {
                prefix: prefix.into(),
            },
            &opts(),
        )
        .await
        .unwrap();
    let mut keys: Vec<String> = snap.facts.into_iter().map(|f| f.key).collect();
    keys.sort();
    keys
}

fn store(data: &Path, command: &str) -> Output {
    aicore(data, &["store", "--data-dir", data.to_str().unwrap(), command])
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number of logged batches `aicore store check` says opening applies.
fn to_apply(said: &str) -> usize {
    said.lines()
        .find_map(|l| l.strip_prefix("logged batches to apply: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count of batches to apply in: {said}"))
}

/// A record of a log segment: where it starts, where its body starts, its number.
struct Record {
    offset: usize,
    seq: u64,
}

/// The records of the segment's latest use, from offset 0 (the layout in
/// `runtime/src/wal.rs`: `len: u32 | crc: u32 | seq: u64 | epoch: u64 | synced: u64 |
/// body | padding to 8 bytes`).
fn records(data: &[u8]) -> Vec<Record> {
    let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 32 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let seq = u64_at(pos + 8);
        if seq == 0 || out.last().is_some_and(|r: &Record| r.seq + 1 != seq) {
            break;
        }
        out.push(Record { offset: pos, seq });
        pos += (32 + len).div_ceil(8) * 8;
    }
    out
}

/// The segment written last (its first record has the higher number) and its records.
fn current_segment(data: &Path) -> (PathBuf, Vec<Record>) {
    ["aicore.redb.wal0", "aicore.redb.wal1"]
        .iter()
        .map(|n| {
            let p = data.join(n);
            let r = records(&std::fs::read(&p).unwrap());
            (p, r)
        })
        .max_by_key(|(_, r)| r.first().map_or(0, |r| r.seq))
        .unwrap()
}

/// Flips a byte of a record's body (its checksum no longer matches).
fn damage(path: &Path, record: &Record) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[record.offset + 33] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn store_check_reports_damage_and_repair_lets_the_appliance_serve_again() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // Written and shut down cleanly: in redb.
    let mut app = Appliance::start_in(&data).await;
    let world = ws::WorldStateClient::new(app.client().await);
    set(&world, "kept.a", "1").await;
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
    drop(app);
    let out = store(&data, "check");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no damage"), "{}", text(&out));

    // Acknowledged one after another, then a crash: in the log only.
    let mut app = Appliance::start_in(&data).await;
    let world = ws::WorldStateClient::new(app.client().await);
    for i in 0..20 {
        set(&world, &format!("logged.{i:02}"), "1").await;
    }
    app.crash().await;
    drop(app);
    let (segment, found) = current_segment(&data);
    assert!(found.len() >= 3, "{} records in {}", found.len(), segment.display());

    let out = store(&data, "check");
    assert!(out.status.success(), "{}", text(&out));
    let logged = to_apply(&text(&out));
    assert!(logged >= found.len(), "{}", text(&out));

    // The last record damaged: what a crash mid-write leaves (no later record says it
    // was acknowledged). Cut away silently, exit 0.
    damage(&segment, found.last().unwrap());
    let out = store(&data, "check");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("no damage"), "{said}");
    assert_eq!(to_apply(&said), logged - 1, "{said}");

    // The first damaged: records written after it say it was acknowledged.
    damage(&segment, &found[0]);
    let out = store(&data, "check");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("DAMAGE"), "{said}");
    assert!(said.contains(&segment.display().to_string()), "{said}");
    // The appliance refuses to start on it, naming the file.
    let [nats, monitor, http] = aicore_e2e::free_ports::<3>();
    let refused = aicore(
        &data,
        &[
            "run",
            "--data-dir",
            data.to_str().unwrap(),
            "--nats-port",
            &nats.to_string(),
            "--nats-monitor-port",
            &monitor.to_string(),
            "--http-port",
            &http.to_string(),
        ],
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains(&segment.display().to_string()),
        "{}",
        text(&refused)
    );

    let out = store(&data, "repair");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("dropped acknowledged batches"), "{said}");
    let out = store(&data, "check");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no damage"), "{}", text(&out));

    // It starts and serves what the damage did not take, and takes writes.
    let app = Appliance::start_in(&data).await;
    let world = ws::WorldStateClient::new(app.client().await);
    assert_eq!(facts(&world, "kept.").await, vec!["kept.a".to_string()]);
    set(&world, "after.repair", "1").await;
    assert_eq!(facts(&world, "after.").await, vec!["after.repair".to_string()]);
}
