//! Unit and property tests of world-state, on an in-memory store and a manual clock.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use aicore_runtime::outbox::{OUTBOX, OutboxEvent};

fn domain(edit: impl FnOnce(&mut WorldStateConfig)) -> Arc<WorldState> {
    let (ctx, _clock) = Ctx::for_tests();
    let mut config = WorldStateConfig::default();
    edit(&mut config);
    Arc::new(WorldState::new(ctx, config))
}

fn set_req(key: &str, data: &str, expected: Option<u64>) -> SetRequest {
    SetRequest {
        key: key.into(),
        data: Bytes::from(data.to_string()),
        content_type: "text/plain".into(),
        expected_version: expected,
        idempotency_key: String::new(),
    }
}

async fn set(
    ws: &WorldState,
    key: &str,
    data: &str,
    expected: Option<u64>,
) -> Result<Fact, Status> {
    Ok(ws
        .set(Request::new(set_req(key, data, expected)))
        .await?
        .fact
        .unwrap_or_default())
}

async fn del(ws: &WorldState, key: &str, expected: Option<u64>) -> Result<DeleteResponse, Status> {
    ws.delete(Request::new(DeleteRequest {
        key: key.into(),
        expected_version: expected,
        idempotency_key: String::new(),
    }))
    .await
}

async fn get(ws: &WorldState, key: &str) -> Result<Fact, Status> {
    Ok(ws
        .get(Request::new(GetRequest { key: key.into() }))
        .await?
        .fact
        .unwrap_or_default())
}

fn revision(ws: &WorldState) -> u64 {
    current_revision(&ws.ctx.store).unwrap()
}

fn events(ws: &WorldState) -> Vec<FactChange> {
    ws.ctx
        .store
        .scan(OUTBOX, b"", b"", 10_000)
        .unwrap()
        .into_iter()
        .map(|(_, v)| aicore_runtime::store::decode::<OutboxEvent>(OUTBOX, v).unwrap())
        .filter(|e| e.subject == CHANGED_SUBJECT)
        .map(|e| prost::Message::decode(e.payload.as_slice()).unwrap())
        .collect()
}

async fn watch(ws: &WorldState, req: WatchRequest) -> Result<Streaming<WatchResponse>, Status> {
    ws.watch(Request::new(req)).await
}

/// The next item, which must come within a few seconds.
async fn next(s: &mut Streaming<WatchResponse>) -> Option<watch_response::Event> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("a watch item in time")
        .map(|r| r.unwrap().event.unwrap())
}

fn change(e: Option<watch_response::Event>) -> FactChange {
    match e {
        Some(watch_response::Event::Change(c)) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test]
async fn versions_and_revisions_advance_and_delete_continues_the_sequence() {
    let ws = domain(|_| {});
    let f = set(&ws, "castle.gate", "open", None).await.unwrap();
    assert_eq!((f.version, f.revision), (1, 1));
    let f = set(&ws, "castle.gate", "closed", Some(1)).await.unwrap();
    assert_eq!((f.version, f.revision), (2, 2));
    let g = get(&ws, "castle.gate").await.unwrap();
    assert_eq!(
        (g.data.as_ref(), g.version, g.revision),
        (&b"closed"[..], 2, 2)
    );
    // Another key shares the world revision.
    assert_eq!(set(&ws, "bridge", "up", Some(0)).await.unwrap().revision, 3);
    let d = del(&ws, "castle.gate", Some(2)).await.unwrap();
    assert_eq!((d.deleted_version, d.revision), (2, 4));
    assert_eq!(
        get(&ws, "castle.gate").await.unwrap_err().code,
        Code::NotFound
    );
    // Re-created: the version continues after the deletion's version (3).
    let f = set(&ws, "castle.gate", "rebuilt", Some(0)).await.unwrap();
    assert_eq!((f.version, f.revision), (4, 5));
    let kinds: Vec<(i32, String, u64, u64, u64)> = events(&ws)
        .into_iter()
        .map(|c| (c.kind, c.key, c.old_version, c.new_version, c.revision))
        .collect();
    let (s, d) = (ChangeKind::Set as i32, ChangeKind::Delete as i32);
    assert_eq!(
        kinds,
        vec![
            (s, "castle.gate".into(), 0, 1, 1),
            (s, "castle.gate".into(), 1, 2, 2),
            (s, "bridge".into(), 0, 1, 3),
            (d, "castle.gate".into(), 2, 3, 4),
            (s, "castle.gate".into(), 0, 4, 5),
        ]
    );
    // Events carry keys and versions, not data.
    assert!(events(&ws).iter().all(|c| c.fact.is_none()));
}

#[tokio::test]
async fn compare_and_set_refusals_write_nothing() {
    let ws = domain(|_| {});
    set(&ws, "k", "a", None).await.unwrap();
    for expected in [Some(0), Some(2), Some(7)] {
        let e = set(&ws, "k", "stale", expected).await.unwrap_err();
        assert_eq!(e.code, Code::Conflict);
    }
    assert_eq!(
        set(&ws, "missing", "x", Some(3)).await.unwrap_err().code,
        Code::Conflict
    );
    assert_eq!(
        del(&ws, "k", Some(5)).await.unwrap_err().code,
        Code::Conflict
    );
    assert_eq!(
        del(&ws, "missing", None).await.unwrap_err().code,
        Code::NotFound
    );
    let e = del(&ws, "k", Some(0)).await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "expected_version");
    assert_eq!(get(&ws, "k").await.unwrap().data.as_ref(), b"a");
    assert_eq!(revision(&ws), 1);
    assert_eq!(events(&ws).len(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let ws = domain(|c| c.max_fact_bytes = 8);
    for (key, field) in [
        ("", "key"),
        ("a\0b", "key"),
        (&"k".repeat(257) as &str, "key"),
    ] {
        let e = set(&ws, key, "x", None).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
    let e = set(&ws, "k", "123456789", None).await.unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::ResourceExhausted, "data")
    );
    let mut req = set_req("k", "x", None);
    req.content_type = "not a mime".into();
    let e = ws.set(Request::new(req)).await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "content_type");
    assert_eq!(revision(&ws), 0);
}

#[tokio::test]
async fn idempotent_set_replays_instead_of_conflicting() {
    let ws = domain(|_| {});
    let mut req = set_req("k", "a", Some(0));
    req.idempotency_key = "op-1".into();
    let first = ws.set(Request::new(req.clone())).await.unwrap();
    // A retry after a lost reply: the first result, not Conflict, and no second write.
    assert_eq!(ws.set(Request::new(req.clone())).await.unwrap(), first);
    assert_eq!(revision(&ws), 1);
    req.data = Bytes::from("b");
    assert_eq!(
        ws.set(Request::new(req)).await.unwrap_err().code,
        Code::Conflict
    );
}

#[tokio::test]
async fn list_pages_by_prefix_and_snapshot_is_one_view() {
    let ws = domain(|c| c.snapshot_max_facts = 30);
    let mut expected = Vec::new();
    for i in 0..23 {
        let key = format!("region.north.{i:02}");
        set(&ws, &key, "x", None).await.unwrap();
        expected.push(key);
    }
    set(&ws, "region.south.a", "x", None).await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = ws
            .list(Request::new(ListRequest {
                prefix: "region.north.".into(),
                page_size: 5,
                page_token: token,
            }))
            .await
            .unwrap();
        assert!(r.facts.len() <= 5);
        seen.extend(r.facts.into_iter().map(|f| f.key));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, expected);
    let snap = ws
        .snapshot(Request::new(SnapshotRequest {
            prefix: "region.".into(),
        }))
        .await
        .unwrap();
    assert_eq!((snap.revision, snap.facts.len()), (24, 24));
    assert!(snap.facts.windows(2).all(|w| w[0].key < w[1].key));
    for i in 0..10 {
        set(&ws, &format!("region.east.{i}"), "x", None)
            .await
            .unwrap();
    }
    let e = ws
        .snapshot(Request::new(SnapshotRequest {
            prefix: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::ResourceExhausted, "prefix")
    );
}

#[tokio::test]
async fn watch_replays_then_catches_up_then_follows_live_changes_in_order() {
    let ws = domain(|_| {});
    set(&ws, "a.1", "x", None).await.unwrap();
    set(&ws, "b.1", "x", None).await.unwrap();
    set(&ws, "a.2", "y", None).await.unwrap();
    let mut s = watch(
        &ws,
        WatchRequest {
            from_revision: 1,
            prefix: "a.".into(),
            keys_only: false,
        },
    )
    .await
    .unwrap();
    let c = change(next(&mut s).await);
    assert_eq!((c.revision, c.key.as_str()), (1, "a.1"));
    let c = change(next(&mut s).await);
    assert_eq!((c.revision, c.key.as_str()), (3, "a.2"));
    assert_eq!(c.fact.unwrap().data.as_ref(), b"y");
    assert_eq!(
        next(&mut s).await,
        Some(watch_response::Event::CaughtUp(CaughtUp { revision: 3 }))
    );
    let writer = ws.clone();
    let task = tokio::spawn(async move {
        for i in 0..20 {
            set(&writer, &format!("a.live.{i}"), "z", None)
                .await
                .unwrap();
            set(&writer, "b.noise", "z", None).await.unwrap();
        }
        del(&writer, "a.1", None).await.unwrap();
    });
    let mut last = 3;
    for i in 0..20 {
        let c = change(next(&mut s).await);
        assert_eq!(c.key, format!("a.live.{i}"));
        assert!(c.revision > last);
        last = c.revision;
    }
    let c = change(next(&mut s).await);
    assert_eq!(
        (c.kind, c.key.as_str(), c.fact),
        (ChangeKind::Delete as i32, "a.1", None)
    );
    task.await.unwrap();
    // From 0: only what happens after the call; keys_only drops the data.
    let mut s = watch(
        &ws,
        WatchRequest {
            from_revision: 0,
            prefix: String::new(),
            keys_only: true,
        },
    )
    .await
    .unwrap();
    let now = revision(&ws);
    assert_eq!(
        next(&mut s).await,
        Some(watch_response::Event::CaughtUp(CaughtUp { revision: now }))
    );
    set(&ws, "c", "x", None).await.unwrap();
    let c = change(next(&mut s).await);
    assert_eq!((c.revision, c.key.as_str(), c.fact), (now + 1, "c", None));
}

/// The same store under another change-log retention (as after a configuration change).
fn with_retention(ws: &WorldState, retention: u64) -> WorldState {
    let mut config = ws.config.clone();
    config.change_log_retention = retention;
    WorldState::new(ws.ctx.clone(), config)
}

/// The revisions the change log holds, and where the meta row says it starts.
fn change_log(ws: &WorldState) -> (Vec<u64>, u64) {
    let rows = ws.ctx.store.scan(CHANGES, b"", b"", 10_000).unwrap();
    let meta = ws.ctx.store.get_msg::<Meta>(META, META_KEY).unwrap();
    (
        rows.iter().filter_map(|(k, _)| revision_of(k)).collect(),
        meta.map_or(0, |m| m.oldest_change),
    )
}

#[tokio::test]
async fn the_change_log_is_pruned_from_where_it_starts_across_retention_changes() {
    let ws = domain(|c| c.change_log_retention = 5);
    for i in 0..12 {
        set(&ws, "k", &i.to_string(), None).await.unwrap();
    }
    assert_eq!(change_log(&ws), ((8..=12).collect(), 8));
    // A longer retention keeps what is there and lets the log grow to it.
    let wider = with_retention(&ws, 8);
    for _ in 0..2 {
        set(&wider, "k", "x", None).await.unwrap();
    }
    assert_eq!(change_log(&ws), ((8..=14).collect(), 8));
    for _ in 0..2 {
        set(&wider, "k", "x", None).await.unwrap();
    }
    assert_eq!(change_log(&ws), ((9..=16).collect(), 9));
    // A shorter one prunes the backlog on the next change (a delete is a change too).
    let narrow = with_retention(&ws, 2);
    del(&narrow, "k", None).await.unwrap();
    assert_eq!(change_log(&ws), (vec![16, 17], 16));
    assert_eq!(oldest_retained(&ws.ctx.store).unwrap(), Some(16));
    // A meta row that does not say where the log starts (written before it did): the
    // log is scanned once, then known again.
    ws.ctx
        .store
        .write(|tx| {
            tx.put_msg(
                META,
                META_KEY,
                &Meta {
                    revision: 17,
                    oldest_change: 0,
                },
            );
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(oldest_retained(&ws.ctx.store).unwrap(), Some(16));
    set(&narrow, "k", "y", None).await.unwrap();
    assert_eq!(change_log(&ws), (vec![17, 18], 17));
}

#[tokio::test]
async fn a_long_backlog_is_pruned_a_batch_per_change() {
    let ws = domain(|c| c.change_log_retention = 1000);
    let n = PRUNE_BATCH as u64 + 50;
    for _ in 0..n {
        set(&ws, "k", "x", None).await.unwrap();
    }
    let one = with_retention(&ws, 1);
    set(&one, "k", "x", None).await.unwrap();
    let (log, oldest) = change_log(&ws);
    assert_eq!(oldest, PRUNE_BATCH as u64 + 1);
    assert_eq!(log.len() as u64, n + 1 - PRUNE_BATCH as u64);
    set(&one, "k", "x", None).await.unwrap();
    assert_eq!(change_log(&ws), (vec![n + 2], n + 2));
}

#[tokio::test]
async fn change_log_is_bounded_and_older_watches_are_refused() {
    let ws = domain(|c| c.change_log_retention = 5);
    for i in 0..12 {
        set(&ws, "k", &i.to_string(), None).await.unwrap();
    }
    let rows = ws.ctx.store.scan(CHANGES, b"", b"", 100).unwrap();
    let kept: Vec<u64> = rows.iter().filter_map(|(k, _)| revision_of(k)).collect();
    assert_eq!(kept, vec![8, 9, 10, 11, 12]);
    let e = watch(
        &ws,
        WatchRequest {
            from_revision: 7,
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code, Code::FailedPrecondition);
    assert_eq!(e.field_violations[0].field, "from_revision");
    let mut s = watch(
        &ws,
        WatchRequest {
            from_revision: 8,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(change(next(&mut s).await).revision, 8);
}

#[tokio::test]
async fn a_watcher_that_falls_behind_the_log_gets_an_error_not_a_gap() {
    let ws = domain(|c| {
        c.change_log_retention = 3;
        c.watch_batch = 1;
    });
    set(&ws, "k", "0", None).await.unwrap();
    let mut s = watch(
        &ws,
        WatchRequest {
            from_revision: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(change(next(&mut s).await).revision, 1);
    for i in 0..10 {
        set(&ws, "k", &i.to_string(), None).await.unwrap();
    }
    let e = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition);
    assert!(s.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn watch_ends_when_idle_or_past_its_longest_duration() {
    let ws = domain(|c| {
        c.watch_idle_timeout_ms = 30_000;
        c.watch_max_duration_ms = 3_600_000;
    });
    let mut s = watch(&ws, WatchRequest::default()).await.unwrap();
    assert!(matches!(
        next(&mut s).await,
        Some(watch_response::Event::CaughtUp(_))
    ));
    let start = Instant::now();
    assert!(s.next().await.is_none());
    assert!(start.elapsed() >= Duration::from_secs(30));
    let ws = domain(|c| {
        c.watch_idle_timeout_ms = 0;
        c.watch_max_duration_ms = 60_000;
    });
    let mut s = watch(&ws, WatchRequest::default()).await.unwrap();
    assert!(matches!(
        next(&mut s).await,
        Some(watch_response::Event::CaughtUp(_))
    ));
    let start = Instant::now();
    assert!(s.next().await.is_none());
    assert!(start.elapsed() >= Duration::from_secs(60));
}

#[derive(Debug, Clone)]
enum Op {
    /// Set key with an expected version: none, the live one, or a guess.
    Set(usize, Expect),
    Delete(usize, Expect),
    /// Several Sets racing with the same (live) expected version.
    Race(usize, usize),
}

#[derive(Debug, Clone)]
enum Expect {
    None,
    Live,
    Guess(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![
        Just(Expect::None),
        Just(Expect::Live),
        (0u64..6).prop_map(Expect::Guess)
    ];
    prop_oneof![
        (0usize..3, expect.clone()).prop_map(|(k, e)| Op::Set(k, e)),
        (0usize..3, expect).prop_map(|(k, e)| Op::Delete(k, e)),
        (0usize..3, 2usize..6).prop_map(|(k, n)| Op::Race(k, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Versions per key and the world revision only ever increase, by one per applied
    /// change; a write whose expected version is stale never writes.
    #[test]
    fn compare_and_set_never_writes_on_a_stale_version(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let ws = domain(|_| {});
            // Model: live version and last version ever given, per key.
            let mut live: [Option<u64>; 3] = [None; 3];
            let mut last = [0u64; 3];
            let mut rev = 0u64;
            for op in ops {
                match op {
                    Op::Set(k, e) => {
                        let key = format!("k{k}");
                        let expected = match e {
                            Expect::None => None,
                            Expect::Live => Some(live[k].unwrap_or(0)),
                            Expect::Guess(g) => Some(g),
                        };
                        let ok = match expected {
                            None => true,
                            Some(0) => live[k].is_none(),
                            Some(n) => live[k] == Some(n),
                        };
                        let r = set(&ws, &key, "v", expected).await;
                        assert_eq!(r.is_ok(), ok, "{key} expected {expected:?} live {:?}", live[k]);
                        if let Ok(f) = r {
                            assert!(f.version > last[k]);
                            rev += 1;
                            assert_eq!(f.revision, rev);
                            last[k] = f.version;
                            live[k] = Some(f.version);
                        } else {
                            assert_eq!(r.unwrap_err().code, Code::Conflict);
                        }
                    }
                    Op::Delete(k, e) => {
                        let key = format!("k{k}");
                        let expected = match e {
                            Expect::None => None,
                            Expect::Live => live[k],
                            Expect::Guess(g) => Some(g.max(1)),
                        };
                        let ok = live[k].is_some() && expected.is_none_or(|n| live[k] == Some(n));
                        let r = del(&ws, &key, expected).await;
                        assert_eq!(r.is_ok(), ok);
                        if let Ok(d) = r {
                            rev += 1;
                            assert_eq!((Some(d.deleted_version), d.revision), (live[k], rev));
                            last[k] = d.deleted_version + 1;
                            live[k] = None;
                        }
                    }
                    Op::Race(k, n) => {
                        let key = format!("k{k}");
                        let expected = live[k].unwrap_or(0);
                        let racers: Vec<_> = (0..n).map(|i| {
                            let (ws, key) = (ws.clone(), key.clone());
                            tokio::spawn(async move { set(&ws, &key, &format!("r{i}"), Some(expected)).await })
                        }).collect();
                        let mut won = Vec::new();
                        for r in racers {
                            match r.await.unwrap() {
                                Ok(f) => won.push(f),
                                Err(e) => assert_eq!(e.code, Code::Conflict),
                            }
                        }
                        assert_eq!(won.len(), 1, "exactly one racer wins");
                        let f = &won[0];
                        assert!(f.version > last[k]);
                        rev += 1;
                        assert_eq!(f.revision, rev);
                        last[k] = f.version;
                        live[k] = Some(f.version);
                        assert_eq!(get(&ws, &key).await.unwrap().data, f.data);
                    }
                }
                assert_eq!(revision(&ws), rev);
            }
            // The change log holds every applied change once, in revision order.
            let revs: Vec<u64> = events(&ws).iter().map(|c| c.revision).collect();
            assert_eq!(revs, (1..=rev).collect::<Vec<_>>());
        });
    }
}
