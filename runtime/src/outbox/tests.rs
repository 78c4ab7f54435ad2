use std::collections::HashSet;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::{self, Store};

/// Stores by msg id (like JetStream's de-duplication) and fails chosen subjects.
#[derive(Default)]
struct Fake {
    stored: Mutex<Vec<String>>,
    ids: Mutex<HashSet<String>>,
    fail_subject: Mutex<Option<String>>,
    calls: Mutex<usize>,
    /// Whether `check` finds stored ids (else every event is sent).
    search: std::sync::atomic::AtomicBool,
    /// Whether publish forgot earlier ids (a window that has passed).
    forgetful: std::sync::atomic::AtomicBool,
}

impl Sink for &Fake {
    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<(), String>> {
        *self.calls.lock().unwrap() += 1;
        let fail = self.fail_subject.lock().unwrap().clone();
        events
            .iter()
            .map(|e| {
                if fail.as_deref() == Some(e.subject.as_str()) {
                    return Err("no stream".into());
                }
                let fresh = self.ids.lock().unwrap().insert(e.msg_id.clone());
                if fresh || self.forgetful.load(std::sync::atomic::Ordering::SeqCst) {
                    self.stored.lock().unwrap().push(e.subject.clone());
                }
                Ok(())
            })
            .collect()
    }

    async fn check(&self, events: &[OutboxEvent], _: SystemTime) -> Vec<Check> {
        // Like JetStream with a window that forgot everything: look in what is stored.
        let ids = self.ids.lock().unwrap();
        events
            .iter()
            .map(|e| {
                if self.search.load(std::sync::atomic::Ordering::SeqCst) && ids.contains(&e.msg_id)
                {
                    Check::Stored
                } else {
                    Check::Send
                }
            })
            .collect()
    }
}

async fn emit(store: &Store, subjects: &[&str]) {
    let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
    store
        .write(move |tx| {
            for s in &subjects {
                tx.emit_raw(s, s.as_bytes().to_vec())?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

fn queued(store: &Store) -> usize {
    store.scan(OUTBOX, b"", b"", usize::MAX).unwrap().len()
}

#[tokio::test]
async fn relays_in_order_and_deletes_acknowledged() {
    let store = Store::in_memory();
    emit(&store, &["evt.a.1", "evt.a.2"]).await;
    emit(&store, &["evt.a.3"]).await;
    let fake = Fake::default();
    let mut from = 0;
    let r = relay_once(&store, &&fake, &mut from).await.unwrap();
    assert_eq!(
        r,
        Round {
            relayed: 3,
            failed: 0
        }
    );
    assert_eq!(from, 4);
    assert_eq!(
        *fake.stored.lock().unwrap(),
        ["evt.a.1", "evt.a.2", "evt.a.3"]
    );
    assert_eq!(queued(&store), 0);
    assert_eq!(
        relay_once(&store, &&fake, &mut from).await.unwrap(),
        Round::default()
    );
    // Later events are found from there.
    emit(&store, &["evt.a.4"]).await;
    assert_eq!(
        relay_once(&store, &&fake, &mut from).await.unwrap().relayed,
        1
    );
    assert_eq!(fake.stored.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn failed_events_stay_queued_until_they_succeed() {
    let store = Store::in_memory();
    emit(&store, &["evt.ok.1", "evt.bad.1", "evt.ok.2"]).await;
    let fake = Fake::default();
    *fake.fail_subject.lock().unwrap() = Some("evt.bad.1".into());
    let mut from = 0;
    let r = relay_once(&store, &&fake, &mut from).await.unwrap();
    assert_eq!(
        r,
        Round {
            relayed: 2,
            failed: 1
        }
    );
    assert_eq!(queued(&store), 1);
    // The next round starts at the failed event.
    assert_eq!(from, 2);
    *fake.fail_subject.lock().unwrap() = None;
    relay_once(&store, &&fake, &mut from).await.unwrap();
    assert_eq!(queued(&store), 0);
    assert_eq!(fake.stored.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_resend_after_a_lost_delete_is_deduplicated_by_msg_id() {
    let store = Store::in_memory();
    emit(&store, &["evt.x.1", "evt.x.2"]).await;
    let fake = Fake::default();
    // Published but "crashed" before the delete: publish without relay_once.
    let rows = store.scan(OUTBOX, b"", b"", 10).unwrap();
    let events: Vec<OutboxEvent> = rows
        .into_iter()
        .map(|(_, v)| store::decode(OUTBOX, v).unwrap())
        .collect();
    (&fake).publish(&events).await;
    relay_once(&store, &&fake, &mut 0).await.unwrap();
    assert_eq!(fake.stored.lock().unwrap().len(), 2);
    assert_eq!(queued(&store), 0);
}

#[tokio::test]
async fn past_the_window_a_stored_event_is_deleted_unsent() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = Store::in_memory();
    emit(&store, &["evt.y.1", "evt.y.2"]).await;
    let fake = Fake::default();
    fake.forgetful.store(true, SeqCst);
    fake.search.store(true, SeqCst);
    // evt.y.1 was published but its delete was lost; evt.y.2 never went out.
    let rows = store.scan(OUTBOX, b"", b"", 1).unwrap();
    let first: Vec<OutboxEvent> = rows
        .into_iter()
        .map(|(_, v)| store::decode(OUTBOX, v).unwrap())
        .collect();
    (&fake).publish(&first).await;
    let r = relay_once(&store, &&fake, &mut 0).await.unwrap();
    assert_eq!(
        r,
        Round {
            relayed: 2,
            failed: 0
        }
    );
    assert_eq!(*fake.stored.lock().unwrap(), ["evt.y.1", "evt.y.2"]);
    assert_eq!(queued(&store), 0);
}

#[test]
fn an_event_may_be_forgotten_from_half_the_window_on() {
    let w = Duration::from_secs(600);
    assert!(!may_be_forgotten(1_000_000, 1_000_000, w));
    assert!(!may_be_forgotten(1_000_000, 1_299_999, w));
    assert!(may_be_forgotten(1_000_000, 1_300_000, w));
    // Unknown age: old.
    assert!(may_be_forgotten(0, 1, w));
    // A clock stepped back is not old.
    assert!(!may_be_forgotten(2_000, 1_000, w));
}

/// A sink whose acks never come (NATS unreachable): it counts the rounds it saw.
#[derive(Default)]
struct Unreachable {
    rounds: std::sync::atomic::AtomicUsize,
}

impl Sink for &Unreachable {
    async fn publish(&self, _: &[OutboxEvent]) -> Vec<Result<(), String>> {
        self.rounds
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::pending().await
    }

    async fn check(&self, events: &[OutboxEvent], _: SystemTime) -> Vec<Check> {
        vec![Check::Send; events.len()]
    }
}

#[tokio::test]
async fn a_stop_while_acks_never_come_ends_the_relay_and_keeps_every_event() {
    let store = Store::in_memory();
    emit(&store, &["evt.u.1", "evt.u.2", "evt.u.3"]).await;
    let sink: &'static Unreachable = Box::leak(Box::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_relay_with(store.clone(), sink, stop.clone()));
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.rounds.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < give_up, "no round started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    // A liveness bound, not a performance figure: the relay must end at all.
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the relay ends although no ack ever comes")
        .unwrap();
    assert_eq!(queued(&store), 3, "unpublished events stay queued");
}

#[tokio::test]
async fn run_relay_wakes_on_commit_and_drains_on_shutdown() {
    let store = Store::in_memory();
    let fake: &'static Fake = Box::leak(Box::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_relay_with(store.clone(), fake, stop.clone()));
    emit(&store, &["evt.w.1"]).await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while queued(&store) > 0 {
        assert!(tokio::time::Instant::now() < give_up, "not relayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // More than one batch, emitted just before shutdown, is drained by the final pass.
    let many: Vec<String> = (0..BATCH * 2 + 5).map(|i| format!("evt.m.{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    emit(&store, &refs).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(queued(&store), 0);
    assert_eq!(fake.stored.lock().unwrap().len(), BATCH * 2 + 6);
}
