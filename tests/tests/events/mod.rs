//! Durable events end to end: the event-bus domain on a real appliance (publish with
//! de-duplication, replay by sequence and time, durable consumers, dead letters), and the
//! outbox relay: an appliance killed mid-load still ends with exactly one event per
//! committed state change, and the relay itself across a simulated crash on a bare
//! JetStream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aicore_domains::event_bus::EventBusConfig;
use aicore_e2e::{Appliance, BareNats};
use aicore_proto::CallOptions;
use aicore_proto::aicore::event_bus::v1::{self as eb, replay_request, replay_response};
use aicore_runtime::outbox::{Emit, Sink};
use aicore_runtime::outbox::{OUTBOX, OutboxEvent};
use aicore_runtime::store::{Store, StoreOptions};
use aicore_runtime::{outbox, streams};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

type Bus = eb::EventBusClient<aicore_sdk::Client>;

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(20))
}

async fn bus(app: &Appliance) -> Bus {
    eb::EventBusClient::new(app.client().await)
}

async fn publish(bus: &Bus, subject: &str, data: &str, dedup: &str) -> eb::PublishResponse {
    bus.publish(
        eb::PublishRequest {
            subject: subject.into(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            content_type: "text/plain".into(),
            headers: [("X-Origin".to_string(), "e2e".to_string())].into(),
            dedup_id: dedup.into(),
        },
        &opts(),
    )
    .await
    .expect("publish")
}

/// Every item of a (non-following) replay.
async fn replay(bus: &Bus, req: eb::ReplayRequest) -> Vec<replay_response::Item> {
    let mut s = bus.replay(req, &opts()).await.expect("replay");
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        out.push(item.expect("replay item").item.expect("an item"));
    }
    out
}

fn messages(items: Vec<replay_response::Item>) -> Vec<eb::EventMessage> {
    items
        .into_iter()
        .map(|i| match i {
            replay_response::Item::Message(m) => m,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn data(m: &eb::EventMessage) -> String {
    String::from_utf8_lossy(&m.data).into_owned()
}

#[tokio::test]
async fn publish_deduplicates_and_replay_returns_what_was_stored() {
    let app = Appliance::start().await;
    let bus = bus(&app).await;
    let first = publish(&bus, "evt.e2e.created", "one", "dedup-1").await;
    assert_eq!(first.stream, "EVENTS");
    assert!(!first.duplicate);
    let again = publish(&bus, "evt.e2e.created", "one (retried)", "dedup-1").await;
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    let second = publish(&bus, "evt.e2e.updated", "two", "dedup-2").await;
    assert!(second.sequence > first.sequence);

    let got = messages(
        replay(
            &bus,
            eb::ReplayRequest {
                stream: "EVENTS".into(),
                start: Some(replay_request::Start::FromSequence(first.sequence)),
                filter_subject: "evt.e2e.>".into(),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(got.iter().map(data).collect::<Vec<_>>(), ["one", "two"]);
    assert_eq!(got[0].subject, "evt.e2e.created");
    assert_eq!(got[0].sequence, first.sequence);
    assert_eq!(got[0].content_type, "text/plain");
    assert_eq!(
        got[0].headers.get("X-Origin").map(String::as_str),
        Some("e2e")
    );
    assert!(got[0].published_at.is_some());

    // Refusals name the field.
    let e = bus
        .publish(
            eb::PublishRequest {
                subject: "dlq.EVENTS.x".into(),
                dedup_id: "d".into(),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "subject");

    let listed = bus
        .list_streams(eb::ListStreamsRequest::default(), &opts())
        .await
        .expect("list streams");
    let names: Vec<&str> = listed.streams.iter().map(|s| s.name.as_str()).collect();
    for s in ["AI", "AUDIT", "DLQ", "EVENTS", "TELEMETRY"] {
        assert!(names.contains(&s), "{names:?}");
    }
    let events = listed.streams.iter().find(|s| s.name == "EVENTS").unwrap();
    assert_eq!(events.messages, 2);
    assert_eq!(events.subjects, ["evt.>"]);
    assert!(events.bytes > 0);
}

#[tokio::test]
async fn replay_from_a_time_and_follow_live_messages() {
    let app = Appliance::start().await;
    let bus = bus(&app).await;
    publish(&bus, "evt.timed.x", "before", "t-0").await;
    let b = publish(&bus, "evt.timed.x", "from", "t-1").await;
    publish(&bus, "evt.timed.x", "after", "t-2").await;
    // The publish time of `from`, as the stream recorded it.
    let all = messages(
        replay(
            &bus,
            eb::ReplayRequest {
                stream: "EVENTS".into(),
                filter_subject: "evt.timed.>".into(),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(all.len(), 3);
    let from = all.iter().find(|m| m.sequence == b.sequence).unwrap();
    let got = messages(
        replay(
            &bus,
            eb::ReplayRequest {
                stream: "EVENTS".into(),
                start: Some(replay_request::Start::FromTime(from.published_at.unwrap())),
                filter_subject: "evt.timed.>".into(),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(got.iter().map(data).collect::<Vec<_>>(), ["from", "after"]);

    // Following: history, the caught-up marker, then a message published afterwards.
    let mut live = bus
        .replay(
            eb::ReplayRequest {
                stream: "EVENTS".into(),
                filter_subject: "evt.timed.>".into(),
                follow: true,
                ..Default::default()
            },
            &CallOptions::timeout(Duration::from_secs(60)),
        )
        .await
        .expect("replay");
    let mut seen = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < give_up, "no caught-up marker: {seen:?}");
        match live
            .next()
            .await
            .expect("open")
            .expect("item")
            .item
            .unwrap()
        {
            replay_response::Item::Message(m) => seen.push(data(&m)),
            replay_response::Item::CaughtUp(c) => {
                assert!(c.last_sequence >= b.sequence);
                break;
            }
        }
    }
    assert_eq!(seen, ["before", "from", "after"]);
    publish(&bus, "evt.timed.x", "live", "t-3").await;
    let next = tokio::time::timeout(Duration::from_secs(30), live.next())
        .await
        .expect("a live message in time")
        .expect("open")
        .expect("item");
    match next.item.unwrap() {
        replay_response::Item::Message(m) => assert_eq!(data(&m), "live"),
        other => panic!("unexpected {other:?}"),
    }
}

async fn fetch(bus: &Bus, consumer: &str, wait_secs: i64) -> Vec<eb::EventMessage> {
    bus.fetch(
        eb::FetchRequest {
            stream: "EVENTS".into(),
            consumer: consumer.into(),
            max_messages: 10,
            wait: Some(prost_types::Duration {
                seconds: wait_secs,
                nanos: 0,
            }),
        },
        &opts(),
    )
    .await
    .expect("fetch")
    .messages
}

async fn ack(bus: &Bus, token: &str, kind: eb::AckKind, reason: &str) -> bool {
    bus.ack(
        eb::AckRequest {
            ack_token: token.into(),
            kind: kind as i32,
            delay: None,
            reason: reason.into(),
        },
        &opts(),
    )
    .await
    .expect("ack")
    .applied
}

async fn create_consumer(
    bus: &Bus,
    name: &str,
    filter: &str,
    max_deliver: u32,
) -> eb::CreateConsumerResponse {
    bus.create_consumer(
        eb::CreateConsumerRequest {
            stream: "EVENTS".into(),
            name: name.into(),
            filter_subject: filter.into(),
            deliver_policy: eb::DeliverPolicy::All as i32,
            ack_wait: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            max_deliver,
            ..Default::default()
        },
        &opts(),
    )
    .await
    .expect("create consumer")
}

/// Dead letters of `consumer`, polled (fetching meanwhile, which lets JetStream notice
/// the exhausted message) until there are `n`.
async fn wait_dead_letters(bus: &Bus, consumer: &str, n: usize) -> Vec<eb::DeadLetter> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let got = bus
            .dead_letters(
                eb::DeadLettersRequest {
                    stream: "EVENTS".into(),
                    consumer: consumer.into(),
                    ..Default::default()
                },
                &opts(),
            )
            .await
            .expect("dead letters")
            .dead_letters;
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < give_up, "no dead letter for {consumer}");
        let redelivered = fetch(bus, consumer, 1).await;
        assert!(
            redelivered.iter().all(|m| m.delivery_count <= 2),
            "delivered past max_deliver: {redelivered:?}"
        );
    }
}

#[tokio::test]
async fn consumers_ack_across_calls_and_poison_messages_reach_the_dlq() {
    let app = Appliance::start().await;
    let bus = bus(&app).await;

    // A good message: fetched, acknowledged once, never delivered again.
    let created = create_consumer(&bus, "worker", "evt.jobs.>", 2).await;
    assert!(created.created);
    let again = create_consumer(&bus, "worker", "evt.jobs.>", 2).await;
    assert!(
        !again.created,
        "an identical consumer is returned, not recreated"
    );
    let e = bus
        .create_consumer(
            eb::CreateConsumerRequest {
                stream: "EVENTS".into(),
                name: "worker".into(),
                filter_subject: "evt.other.>".into(),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, aicore_proto::Code::Conflict);

    let e = bus
        .fetch(
            eb::FetchRequest {
                stream: "EVENTS".into(),
                consumer: "nobody".into(),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, aicore_proto::Code::NotFound);

    let good = publish(&bus, "evt.jobs.good", "ok", "job-1").await;
    let got = fetch(&bus, "worker", 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sequence, good.sequence);
    assert_eq!(got[0].delivery_count, 1);
    assert!(ack(&bus, &got[0].ack_token, eb::AckKind::Ack, "").await);
    assert!(
        !ack(&bus, &got[0].ack_token, eb::AckKind::Ack, "").await,
        "second ack is not applied"
    );

    // A poison message: delivered max_deliver (2) times without ack, then dead.
    let poison = publish(&bus, "evt.jobs.poison", "boom", "job-2").await;
    let first = fetch(&bus, "worker", 10).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].sequence, poison.sequence);
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < give_up, "never redelivered");
        let again = fetch(&bus, "worker", 5).await;
        if let Some(m) = again.first() {
            assert_eq!(m.sequence, poison.sequence);
            assert_eq!(m.delivery_count, 2);
            break;
        }
    }
    let dead = wait_dead_letters(&bus, "worker", 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.consumer, "worker");
    assert_eq!(d.reason, "max_deliver exceeded");
    assert_eq!(d.deliveries, 2);
    let m = d.message.as_ref().unwrap();
    assert_eq!(m.stream, "EVENTS");
    assert_eq!(m.sequence, poison.sequence);
    assert_eq!(m.subject, "evt.jobs.poison");
    assert_eq!(data(m), "boom");
    assert_eq!(m.headers.get("X-Origin").map(String::as_str), Some("e2e"));

    // Giving up explicitly: TERM with a reason.
    publish(&bus, "evt.jobs.bad", "unparseable", "job-3").await;
    let got = fetch(&bus, "worker", 10).await;
    assert_eq!(got.len(), 1);
    assert!(ack(&bus, &got[0].ack_token, eb::AckKind::Term, "cannot parse").await);
    let dead = wait_dead_letters(&bus, "worker", 2).await;
    assert_eq!(dead[1].reason, "cannot parse");
    assert_eq!(
        dead[1].message.as_ref().map(data).as_deref(),
        Some("unparseable")
    );

    // Paging: one at a time, the same two, then the end.
    let p1 = bus
        .dead_letters(
            eb::DeadLettersRequest {
                page_size: 1,
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(p1.dead_letters.len(), 1);
    let p2 = bus
        .dead_letters(
            eb::DeadLettersRequest {
                page_size: 1,
                page_token: p1.next_page_token.clone(),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(p2.dead_letters.len(), 1);
    assert!(p2.next_page_token.is_empty());
    assert!(p2.dead_letters[0].dlq_sequence > p1.dead_letters[0].dlq_sequence);
}

/// A sink that publishes two batches, then half of the next and hangs (a crash).
struct CrashingSink {
    sink: outbox::JetStreamSink,
    batches: AtomicUsize,
    crashed: Arc<tokio::sync::Notify>,
}

impl outbox::Sink for CrashingSink {
    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<(), String>> {
        if self.batches.fetch_add(1, Ordering::SeqCst) < 2 {
            return self.sink.publish(events).await;
        }
        self.sink.publish(&events[..events.len() / 2]).await;
        self.crashed.notify_one();
        std::future::pending().await
    }

    async fn check(
        &self,
        events: &[OutboxEvent],
        now: std::time::SystemTime,
    ) -> Vec<outbox::Check> {
        self.sink.check(events, now).await
    }
}

/// Sequences in a stream whose subject matches `filter`.
async fn count(js: &async_nats::jetstream::Context, filter: &str) -> u64 {
    let s = js.get_stream("EVENTS").await.expect("EVENTS");
    let info = s
        .info_with_subjects(filter)
        .await
        .expect("stream info")
        .map(|r| r.map(|(_, n)| n as u64))
        .collect::<Vec<_>>()
        .await;
    info.into_iter().map(|r| r.expect("subject count")).sum()
}

#[tokio::test]
async fn outbox_relay_delivers_every_event_exactly_once_across_a_crash() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let nats = BareNats::start_js(&dir.path().join("js")).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    streams::ensure_streams(&js, &EventBusConfig::default().streams())
        .await
        .expect("streams");
    // Idempotent: a second start changes nothing.
    streams::ensure_streams(&js, &EventBusConfig::default().streams())
        .await
        .expect("streams again");

    let path = dir.path().join("store.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    for w in 0..N / 30 {
        store
            .write(move |tx| {
                for i in 0..30 {
                    tx.emit_raw(&format!("evt.relay.{}", w * 30 + i), vec![1])?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    // A relay that dies mid-batch: two batches relayed, then half of the third published
    // and acknowledged by JetStream but never deleted from the outbox.
    let crashed = Arc::new(tokio::sync::Notify::new());
    let sink = CrashingSink {
        sink: outbox::JetStreamSink::new(js.clone()),
        batches: AtomicUsize::new(0),
        crashed: crashed.clone(),
    };
    let relay = tokio::spawn(outbox::run_relay_with(
        store.clone(),
        sink,
        CancellationToken::new(),
    ));
    tokio::time::timeout(Duration::from_secs(60), crashed.notified())
        .await
        .expect("the relay reached its third batch");
    relay.abort();
    let _ = relay.await;
    let stored = 2 * outbox::BATCH + outbox::BATCH / 2;
    assert_eq!(count(&js, "evt.relay.>").await, stored as u64);
    assert_eq!(
        store.scan(OUTBOX, b"", b"", usize::MAX).unwrap().len(),
        N - 2 * outbox::BATCH
    );
    store.close().await;
    drop(store);

    // Restart: the same file, a fresh relay.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(outbox::run_relay(store.clone(), js.clone(), stop.clone()));
    let give_up = Instant::now() + Duration::from_secs(120);
    while !store.scan(OUTBOX, b"", b"", 1).unwrap().is_empty() {
        assert!(Instant::now() < give_up, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    relay.await.unwrap();

    // Exactly N messages, one per subject: none lost, none duplicated.
    let mut s = js.get_stream("EVENTS").await.unwrap();
    let per_subject: Vec<(String, usize)> = s
        .info_with_subjects("evt.relay.>")
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(per_subject.len(), N);
    assert!(
        per_subject.iter().all(|(_, n)| *n == 1),
        "a duplicate was stored"
    );
    assert_eq!(s.info().await.unwrap().state.messages, N as u64);
}

/// A crash between JetStream's ack and the outbox delete, then a stop longer than the
/// stream's duplicate window: the restarted relay finds the event in the stream and does
/// not store it again, and still sends the event that never went out.
#[tokio::test]
async fn a_resend_after_the_duplicate_window_stores_the_event_once() {
    use async_nats::jetstream::{message::PublishMessage, stream};
    let dir = tempfile::tempdir().unwrap();
    let nats = BareNats::start_js(&dir.path().join("js")).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // EVENTS with a one-second window (the appliance never sets one under two minutes;
    // the relay reads the window from the stream, so a short one stands for a long stop).
    js.create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["evt.>".into()],
        duplicate_window: Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .unwrap();

    let path = dir.path().join("store.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    store
        .write(|tx| {
            tx.emit_raw("evt.window.acked", vec![1])?;
            tx.emit_raw("evt.window.unsent", vec![2])
        })
        .await
        .unwrap();
    // The first event published and acknowledged; then the process "dies" before the
    // outbox delete.
    let rows = store.scan(OUTBOX, b"", b"", 1).unwrap();
    let acked: Vec<OutboxEvent> = rows
        .into_iter()
        .map(|(_, v)| aicore_runtime::store::decode(OUTBOX, v).unwrap())
        .collect();
    let sent = outbox::JetStreamSink::new(js.clone()).publish(&acked).await;
    assert_eq!(sent, [Ok(())]);
    store.close().await;
    drop(store);

    // Wait until the stream has forgotten ids published after that event: a probe id is
    // re-sent until the stream stores it again (its subject is not counted below).
    let probe = || {
        PublishMessage::build()
            .payload(Bytes::from_static(b"p"))
            .message_id("window-probe")
    };
    js.send_publish("evt.probe.x", probe())
        .await
        .unwrap()
        .await
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ack = js
            .send_publish("evt.probe.x", probe())
            .await
            .unwrap()
            .await
            .unwrap();
        if !ack.duplicate {
            break;
        }
        assert!(Instant::now() < give_up, "the duplicate window never passed");
    }

    // Restart: the same store file, a fresh relay.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(outbox::run_relay(store.clone(), js.clone(), stop.clone()));
    while !store.scan(OUTBOX, b"", b"", 1).unwrap().is_empty() {
        assert!(Instant::now() < give_up, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    relay.await.unwrap();
    assert_eq!(count(&js, "evt.window.acked").await, 1, "stored twice");
    assert_eq!(count(&js, "evt.window.unsent").await, 1, "never sent");
}

#[tokio::test]
async fn killed_mid_load_every_committed_change_has_exactly_one_event() {
    use aicore_proto::aicore::world_state::v1 as ws;
    use prost::Message;

    const KEYS: usize = 8;
    let mut app = Appliance::start().await;
    let world = ws::WorldStateClient::new(app.client().await);
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for k in 0..KEYS {
        let world = world.clone();
        let done = done.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let r = world
                    .set(
                        ws::SetRequest {
                            key: format!("crash.k{k}"),
                            data: Bytes::from(format!("{i}")),
                            ..Default::default()
                        },
                        &CallOptions::timeout(Duration::from_secs(5)),
                    )
                    .await;
                if r.is_err() {
                    return;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < 300 {
        assert!(Instant::now() < give_up, "writes made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.crash().await;
    for w in writers {
        let _ = w.await;
    }

    let dir = app.data_dir.clone();
    let _old = app;
    let app = Appliance::start_in(&dir).await;
    let world = ws::WorldStateClient::new(app.client().await);
    let mut expected = std::collections::BTreeSet::new();
    for k in 0..KEYS {
        let key = format!("crash.k{k}");
        let v = world
            .get(ws::GetRequest { key: key.clone() }, &opts())
            .await
            .map(|r| r.fact.map_or(0, |f| f.version))
            .unwrap_or(0);
        expected.extend((1..=v).map(|v| (key.clone(), v)));
    }
    assert!(expected.len() >= 300, "{} committed", expected.len());

    // The relay catches up after the restart; then the events match the state exactly.
    let bus = bus(&app).await;
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let got = messages(
            replay(
                &bus,
                eb::ReplayRequest {
                    stream: "EVENTS".into(),
                    filter_subject: "evt.world.changed".into(),
                    ..Default::default()
                },
            )
            .await,
        );
        let changes: Vec<(String, u64)> = got
            .iter()
            .map(|m| ws::FactChange::decode(m.data.clone()).expect("a FactChange"))
            .filter(|c| c.key.starts_with("crash."))
            .map(|c| (c.key, c.new_version))
            .collect();
        let unique: std::collections::BTreeSet<_> = changes.iter().cloned().collect();
        assert_eq!(unique.len(), changes.len(), "an event was published twice");
        assert!(
            unique.is_subset(&expected),
            "an event without its state change: {:?}",
            unique.difference(&expected).next()
        );
        if unique == expected {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "{} of {} events arrived",
            unique.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn stopping_mid_replay_and_mid_tick_waits_for_background_work_and_exits_cleanly() {
    let mut app = Appliance::start().await;
    let bus = bus(&app).await;
    publish(&bus, "evt.stop.a", "a", "s-1").await;
    // A following replay (a background task of event-bus), caught up and waiting; the
    // time-manager's ticker runs all along.
    let mut live = bus
        .replay(
            eb::ReplayRequest {
                stream: "EVENTS".into(),
                filter_subject: "evt.stop.>".into(),
                follow: true,
                ..Default::default()
            },
            &CallOptions::timeout(Duration::from_secs(60)),
        )
        .await
        .expect("replay");
    loop {
        let item = live.next().await.expect("open").expect("item").item;
        if matches!(item, Some(replay_response::Item::CaughtUp(_))) {
            break;
        }
    }
    app.signal(libc::SIGTERM);
    // The stream ends with Unavailable (resume), not silence.
    let end = tokio::time::timeout(Duration::from_secs(30), live.next())
        .await
        .expect("the replay ends when the appliance stops");
    match end {
        Some(Err(e)) => assert_eq!(e.code, aicore_proto::Code::Unavailable, "{e}"),
        other => panic!("the replay ended without saying so: {other:?}"),
    }
    assert_eq!(app.wait_exit(Duration::from_secs(60)).await, Some(0));
    let log = app.log();
    assert!(
        log.contains("domain background tasks ended"),
        "teardown did not wait for the domains' tasks:\n{log}"
    );
    assert!(!log.contains("did not end in time"), "{log}");
}
