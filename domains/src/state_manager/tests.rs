//! state-manager's unit tests, on an in-memory store.

use std::collections::HashSet;
use std::sync::Arc;

use aicore_proto::{Caller, Metadata};
use bytes::Bytes;

use super::*;

fn domain(edit: impl FnOnce(&mut StateManagerConfig)) -> Arc<StateManager> {
    let (ctx, _clock) = Ctx::for_tests();
    let mut config = StateManagerConfig::default();
    edit(&mut config);
    Arc::new(StateManager::new(ctx, config))
}

fn trusted<T>(body: T) -> Request<T> {
    Request::new(body)
}

fn as_player<T>(player: &str, body: T) -> Request<T> {
    Request::new(body).on_behalf_of(player, &["player"])
}

fn put_req(player: &str, key: &str, data: &str, expected: Option<u64>) -> PutRequest {
    PutRequest {
        player_id: player.to_string(),
        key: key.to_string(),
        data: Bytes::from(data.to_string()),
        content_type: "application/json".to_string(),
        expected_version: expected,
        ..Default::default()
    }
}

async fn put(
    sm: &StateManager,
    key: &str,
    data: &str,
    expected: Option<u64>,
) -> Result<u64, Status> {
    let r = sm.put(trusted(put_req("p1", key, data, expected))).await?;
    Ok(r.metadata.map(|m| m.version).unwrap_or_default())
}

async fn get(sm: &StateManager, key: &str, version: u64) -> Result<(u64, Bytes), Status> {
    let r = sm
        .get(trusted(GetRequest {
            player_id: "p1".into(),
            key: key.into(),
            version,
        }))
        .await?;
    Ok((r.metadata.map(|m| m.version).unwrap_or_default(), r.data))
}

async fn history(sm: &StateManager, key: &str) -> Vec<VersionInfo> {
    sm.history(trusted(HistoryRequest {
        player_id: "p1".into(),
        key: key.into(),
        page_size: 0,
        page_token: String::new(),
    }))
    .await
    .unwrap()
    .versions
}

#[tokio::test]
async fn put_then_get_returns_data_and_metadata() {
    let sm = domain(|_| {});
    let r = sm
        .put(trusted(put_req("p1", "saves/slot1", "{\"hp\":3}", None)))
        .await
        .unwrap();
    let m = r.metadata.unwrap();
    assert_eq!((m.version, m.size_bytes), (1, 8));
    assert_eq!(m.content_type, "application/json");
    let g = sm
        .get(trusted(GetRequest {
            player_id: "p1".into(),
            key: "saves/slot1".into(),
            version: 0,
        }))
        .await
        .unwrap();
    assert_eq!(g.data.as_ref(), b"{\"hp\":3}");
    assert_eq!(g.metadata.unwrap(), m);
    assert_eq!(put(&sm, "saves/slot1", "{}", None).await.unwrap(), 2);
    assert_eq!(get(&sm, "saves/slot1", 0).await.unwrap().1.as_ref(), b"{}");
    // Default content type, bad content type.
    let mut req = put_req("p1", "raw", "x", None);
    req.content_type.clear();
    let m = sm.put(trusted(req)).await.unwrap().metadata.unwrap();
    assert_eq!(m.content_type, "application/octet-stream");
    let mut req = put_req("p1", "raw", "x", None);
    req.content_type = "not a mime".into();
    let e = sm.put(trusted(req)).await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "content_type");
}

#[tokio::test]
async fn bad_ids_are_refused_naming_the_field() {
    let sm = domain(|_| {});
    for (player, key, field) in [
        ("", "k", "player_id"),
        ("p\0x", "k", "player_id"),
        ("p1", "", "key"),
        ("p1", "a\0b", "key"),
        ("p1", &"k".repeat(257), "key"),
    ] {
        let e = sm
            .put(trusted(put_req(player, key, "x", None)))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(e.field_violations[0].field, field);
    }
}

#[tokio::test]
async fn create_only_conflicts_on_existing_but_recreates_after_delete() {
    let sm = domain(|_| {});
    assert_eq!(put(&sm, "k", "a", Some(0)).await.unwrap(), 1);
    let e = put(&sm, "k", "b", Some(0)).await.unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    assert_eq!(get(&sm, "k", 0).await.unwrap(), (1, Bytes::from("a")));
    sm.delete(trusted(DeleteRequest {
        player_id: "p1".into(),
        key: "k".into(),
        expected_version: None,
        ..Default::default()
    }))
    .await
    .unwrap();
    // Versions are never reused: the re-created object continues after the tombstone.
    assert_eq!(put(&sm, "k", "c", Some(0)).await.unwrap(), 3);
}

#[tokio::test]
async fn expected_version_mismatch_conflicts_and_writes_nothing() {
    let sm = domain(|_| {});
    put(&sm, "k", "v1", None).await.unwrap();
    put(&sm, "k", "v2", Some(1)).await.unwrap();
    let e = put(&sm, "k", "stale", Some(1)).await.unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    assert_eq!(get(&sm, "k", 0).await.unwrap(), (2, Bytes::from("v2")));
    assert_eq!(history(&sm, "k").await.len(), 2);
    let e = put(&sm, "missing", "x", Some(4)).await.unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    assert_eq!(
        get(&sm, "missing", 0).await.unwrap_err().code,
        Code::NotFound
    );
}

#[tokio::test]
async fn oversized_object_is_refused_and_nothing_written() {
    let sm = domain(|c| c.max_object_bytes = 16);
    put(&sm, "k", &"a".repeat(16), None).await.unwrap();
    let e = put(&sm, "k", &"b".repeat(17), None).await.unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    assert_eq!(e.field_violations[0].field, "data");
    assert_eq!(get(&sm, "k", 0).await.unwrap().0, 1);
    assert_eq!(history(&sm, "k").await.len(), 1);
    // The default limit is 256 KiB.
    let sm = domain(|_| {});
    let big = "x".repeat(256 * 1024 + 1);
    assert_eq!(
        put(&sm, "big", &big, None).await.unwrap_err().code,
        Code::ResourceExhausted
    );
    assert_eq!(get(&sm, "big", 0).await.unwrap_err().code, Code::NotFound);
}

#[tokio::test]
async fn history_is_newest_first_pruned_to_depth_and_versions_readable() {
    let sm = domain(|c| c.history_depth = 3);
    for i in 1..=5 {
        assert_eq!(put(&sm, "k", &format!("v{i}"), None).await.unwrap(), i);
    }
    let versions: Vec<u64> = history(&sm, "k").await.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![5, 4, 3]);
    assert_eq!(get(&sm, "k", 4).await.unwrap(), (4, Bytes::from("v4")));
    assert_eq!(get(&sm, "k", 3).await.unwrap(), (3, Bytes::from("v3")));
    assert_eq!(get(&sm, "k", 2).await.unwrap_err().code, Code::NotFound);
    assert_eq!(get(&sm, "k", 9).await.unwrap_err().code, Code::NotFound);
    // Pruned data rows are gone too, not only the metadata.
    let prefix = versions_prefix("p1", "k");
    let rows = sm.ctx.store.scan(VERSIONS, &prefix, &prefix, 100).unwrap();
    assert_eq!(rows.len(), 3);
    let newest: VersionRecord = aicore_runtime::store::decode(VERSIONS, rows[0].1.clone()).unwrap();
    assert_eq!(newest.data, Bytes::from("v5"));
}

/// The same store under another history depth (as after a configuration change).
fn with_depth(sm: &StateManager, depth: u32) -> StateManager {
    let mut config = sm.config.clone();
    config.history_depth = depth;
    StateManager::new(sm.ctx.clone(), config)
}

/// The version rows the store holds for `p1/key`, oldest first, and the head's idea
/// of where they start.
fn rows(sm: &StateManager, key: &str) -> (Vec<u64>, Option<u64>) {
    let prefix = versions_prefix("p1", key);
    let mut v: Vec<u64> = sm
        .ctx
        .store
        .scan(VERSIONS, &prefix, &prefix, 10_000)
        .unwrap()
        .iter()
        .filter_map(|(k, _)| version_of(k))
        .collect();
    v.reverse();
    let head = sm
        .ctx
        .store
        .get_msg::<Head>(OBJECTS, &head_key("p1", key))
        .unwrap()
        .map(|h| h.oldest_version);
    (v, head)
}

#[tokio::test]
async fn pruning_follows_depth_changes_deletes_and_old_heads() {
    let sm = domain(|c| c.history_depth = 4);
    for _ in 0..10 {
        put(&sm, "k", "x", None).await.unwrap();
    }
    assert_eq!(rows(&sm, "k"), ((7..=10).collect(), Some(7)));
    // A raised depth keeps what is there and lets history grow.
    let deeper = with_depth(&sm, 8);
    for _ in 0..2 {
        put(&deeper, "k", "x", None).await.unwrap();
    }
    assert_eq!(rows(&sm, "k"), ((7..=12).collect(), Some(7)));
    for _ in 0..4 {
        put(&deeper, "k", "x", None).await.unwrap();
    }
    assert_eq!(rows(&sm, "k"), ((9..=16).collect(), Some(9)));
    // A lowered one prunes the backlog on the next write.
    let shallow = with_depth(&sm, 2);
    put(&shallow, "k", "x", None).await.unwrap();
    assert_eq!(rows(&sm, "k"), (vec![16, 17], Some(16)));
    // A Delete prunes too; the re-created object (no head: rows are scanned) goes on.
    shallow
        .delete(trusted(DeleteRequest {
            player_id: "p1".into(),
            key: "k".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(rows(&sm, "k"), (vec![17, 18], None));
    assert_eq!(put(&shallow, "k", "x", None).await.unwrap(), 19);
    assert_eq!(rows(&sm, "k"), (vec![18, 19], Some(18)));
    // A head that does not know where its rows start (written before heads kept it).
    let okey = head_key("p1", "k");
    sm.ctx
        .store
        .write(move |tx| {
            let mut h = tx.get_msg::<Head>(OBJECTS, &okey)?.unwrap();
            h.oldest_version = 0;
            tx.put_msg(OBJECTS, &okey, &h);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(put(&shallow, "k", "x", None).await.unwrap(), 20);
    assert_eq!(rows(&sm, "k"), (vec![19, 20], Some(19)));
}

#[tokio::test]
async fn one_write_prunes_at_most_a_batch_of_a_long_backlog() {
    let sm = domain(|c| c.history_depth = 400);
    let n = PRUNE_BATCH as u64 + 100;
    for _ in 0..n {
        put(&sm, "k", "x", None).await.unwrap();
    }
    let one = with_depth(&sm, 1);
    put(&one, "k", "x", None).await.unwrap();
    let (left, oldest) = rows(&sm, "k");
    assert_eq!(left.len() as u64, n + 1 - PRUNE_BATCH as u64);
    assert_eq!(oldest, Some(PRUNE_BATCH as u64 + 1));
    put(&one, "k", "x", None).await.unwrap();
    assert_eq!(rows(&sm, "k"), (vec![n + 2], Some(n + 2)));
}

#[tokio::test]
async fn history_pages_newest_first_without_gaps() {
    let sm = domain(|_| {});
    for i in 1..=7 {
        put(&sm, "k", &format!("v{i}"), None).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = sm
            .history(trusted(HistoryRequest {
                player_id: "p1".into(),
                key: "k".into(),
                page_size: 3,
                page_token: token,
            }))
            .await
            .unwrap();
        assert!(r.versions.len() <= 3);
        seen.extend(r.versions.iter().map(|v| v.version));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
}

#[tokio::test]
async fn delete_then_get_is_not_found_and_history_shows_tombstone() {
    let sm = domain(|_| {});
    put(&sm, "k", "v1", None).await.unwrap();
    put(&sm, "k", "v2", None).await.unwrap();
    let del = |expected| {
        sm.delete(trusted(DeleteRequest {
            player_id: "p1".into(),
            key: "k".into(),
            expected_version: expected,
            ..Default::default()
        }))
    };
    assert_eq!(del(Some(1)).await.unwrap_err().code, Code::Conflict);
    assert_eq!(
        del(Some(0)).await.unwrap_err().field_violations[0].field,
        "expected_version"
    );
    let r = del(Some(2)).await.unwrap();
    assert_eq!((r.deleted_version, r.tombstone_version), (2, 3));
    assert_eq!(get(&sm, "k", 0).await.unwrap_err().code, Code::NotFound);
    assert_eq!(get(&sm, "k", 3).await.unwrap_err().code, Code::NotFound);
    assert_eq!(get(&sm, "k", 2).await.unwrap(), (2, Bytes::from("v2")));
    let h = history(&sm, "k").await;
    assert_eq!(h.len(), 3);
    assert!(h[0].deleted && h[0].version == 3 && h[0].size_bytes == 0);
    assert!(!h[1].deleted && h[1].version == 2);
    // Deleting again: nothing live to delete.
    assert_eq!(del(None).await.unwrap_err().code, Code::NotFound);
    // A conditional put on the deleted object only works as a create.
    assert_eq!(
        put(&sm, "k", "x", Some(3)).await.unwrap_err().code,
        Code::Conflict
    );
}

#[tokio::test]
async fn list_by_prefix_pages_without_duplicates_or_gaps() {
    let sm = domain(|_| {});
    let mut expected = Vec::new();
    for i in 0..23 {
        let key = format!("saves/{i:02}");
        put(&sm, &key, "x", None).await.unwrap();
        expected.push(key);
    }
    put(&sm, "settings", "x", None).await.unwrap();
    put(&sm, "saves/gone", "x", None).await.unwrap();
    sm.delete(trusted(DeleteRequest {
        player_id: "p1".into(),
        key: "saves/gone".into(),
        expected_version: None,
        ..Default::default()
    }))
    .await
    .unwrap();
    // Another player's objects never show up.
    sm.put(trusted(put_req("p10", "saves/00", "x", None)))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = sm
            .list(trusted(ListRequest {
                player_id: "p1".into(),
                prefix: "saves/".into(),
                page_size: 5,
                page_token: token,
            }))
            .await
            .unwrap();
        pages += 1;
        assert!(r.objects.len() <= 5);
        assert!(r.objects.iter().all(|o| o.player_id == "p1"));
        seen.extend(r.objects.into_iter().map(|o| o.key));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    assert_eq!(seen, expected);
    let e = sm
        .list(trusted(ListRequest {
            player_id: "p1".into(),
            prefix: "saves/".into(),
            page_size: 5,
            page_token: "garbage!".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "page_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_with_same_expected_version_exactly_one_wins() {
    let sm = domain(|_| {});
    put(&sm, "k", "base", None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let sm = sm.clone();
        tasks.push(tokio::spawn(async move {
            sm.put(trusted(put_req("p1", "k", &format!("w{i}"), Some(1))))
                .await
                .map(|r| (i, r.metadata.map(|m| m.version)))
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(w) => winners.push(w),
            Err(e) => assert_eq!(e.code, Code::Conflict),
        }
    }
    assert_eq!(winners.len(), 1);
    let (i, version) = winners[0];
    assert_eq!(version, Some(2));
    assert_eq!(
        get(&sm, "k", 0).await.unwrap(),
        (2, Bytes::from(format!("w{i}")))
    );
    assert_eq!(history(&sm, "k").await.len(), 2);
}

#[tokio::test]
async fn a_player_cannot_touch_another_players_data() {
    let sm = domain(|_| {});
    sm.put(as_player("alice", put_req("alice", "k", "mine", None)))
        .await
        .unwrap();
    let e = sm
        .put(as_player("mallory", put_req("alice", "k", "evil", None)))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    let e = sm
        .get(as_player(
            "mallory",
            GetRequest {
                player_id: "alice".into(),
                key: "k".into(),
                version: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    let e = sm
        .delete(as_player(
            "mallory",
            DeleteRequest {
                player_id: "alice".into(),
                key: "k".into(),
                expected_version: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    let e = sm
        .list(as_player(
            "mallory",
            ListRequest {
                player_id: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    // The owner still reads their data unchanged; a service principal may too.
    let mut req = Request {
        body: GetRequest {
            player_id: "alice".into(),
            key: "k".into(),
            version: 0,
        },
        meta: Metadata {
            caller: Some(Caller {
                account_id: "svc".into(),
                roles: vec!["service".into()],
            }),
            ..Default::default()
        },
    };
    assert_eq!(sm.get(req.clone()).await.unwrap().data.as_ref(), b"mine");
    req.meta.caller = Some(Caller {
        account_id: "alice".into(),
        roles: vec!["player".into()],
    });
    assert_eq!(sm.get(req).await.unwrap().data.as_ref(), b"mine");
}

#[tokio::test]
async fn idempotent_put_and_delete_replay_the_first_reply() {
    let sm = domain(|_| {});
    let mut req = put_req("p1", "k", "first", None);
    req.idempotency_key = "save-1".into();
    let first = sm.put(trusted(req.clone())).await.unwrap();
    let again = sm.put(trusted(req.clone())).await.unwrap();
    assert_eq!(first, again);
    // The retry wrote no second version.
    assert_eq!(get(&sm, "k", 0).await.unwrap().0, 1);
    let mut changed = req.clone();
    changed.data = Bytes::from("other");
    assert_eq!(
        sm.put(trusted(changed)).await.unwrap_err().code,
        Code::Conflict
    );
    assert_eq!(get(&sm, "k", 0).await.unwrap(), (1, Bytes::from("first")));

    let del = DeleteRequest {
        player_id: "p1".into(),
        key: "k".into(),
        idempotency_key: "del-1".into(),
        ..Default::default()
    };
    let d1 = sm.delete(trusted(del.clone())).await.unwrap();
    // A replayed delete answers as the first did instead of NotFound.
    assert_eq!(sm.delete(trusted(del)).await.unwrap(), d1);
}
