//! The game clock on a real appliance: a timer fires `evt.time.scheduled` that a
//! JetStream consumer on stream `EVENTS` receives exactly once, and the clock survives a
//! restart on the same data directory, continuing from where it was.

use std::time::Duration;

use aicore_e2e::{Appliance, game_seconds};
use aicore_proto::CallOptions;
use aicore_proto::aicore::time_manager::v1 as tm;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn a_timer_fires_once_on_jetstream_and_the_clock_survives_a_restart() {
    // A data dir this test owns, so it outlives the first appliance.
    let temp = tempfile::tempdir().expect("a temp dir");
    let dir = temp.path().to_path_buf();
    let mut app = Appliance::start_in(&dir).await;
    let time = tm::TimeManagerClient::new(app.client().await);
    // One game hour per real second, so a timer a few game seconds ahead is due at once.
    time.set_scale(tm::SetScaleRequest { scale: 3600.0 }, &opts())
        .await
        .expect("set scale");
    let now = game_seconds(&time).await;
    let timer = time
        .schedule(
            tm::ScheduleRequest {
                fire_at_seconds: now + 1800,
                repeat_every_seconds: 0,
                name: "e2e.gate.open".into(),
                payload: Bytes::from_static(b"open the gate"),
                content_type: "text/plain".into(),
                idempotency_key: "e2e-timer".into(),
            },
            &opts(),
        )
        .await
        .expect("schedule")
        .timer
        .expect("timer");

    // A durable consumer on EVENTS, from the start of the stream.
    let mut messages = app.events("e2e-time", "evt.time.scheduled").await;
    let first = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .unwrap_or_else(|_| panic!("no evt.time.scheduled in time\n{}", app.log()))
        .expect("open")
        .expect("a message");
    let event = tm::ScheduledEvent::decode(first.payload.clone()).expect("a ScheduledEvent");
    let fired = event.timer.expect("the timer");
    assert_eq!(fired.schedule_id, timer.schedule_id);
    assert_eq!(fired.name, "e2e.gate.open");
    assert_eq!(fired.payload.as_ref(), b"open the gate");
    assert!(event.fired_at.expect("fired_at").seconds >= now + 1800);
    first.ack().await.expect("ack");
    // Exactly once: nothing more arrives for this timer, and it is no longer pending.
    let more = tokio::time::timeout(Duration::from_secs(3), messages.next()).await;
    assert!(more.is_err(), "a second evt.time.scheduled arrived");
    let pending = time
        .list_schedules(tm::ListSchedulesRequest::default(), &opts())
        .await
        .expect("list");
    assert!(pending.timers.is_empty());

    // Crash (SIGKILL) and restart on the same data dir: the clock continues from where it
    // was (the downtime counts as elapsed at the same scale), not from the start time.
    let before = game_seconds(&time).await;
    drop(messages);
    app.crash().await;
    let app2 = Appliance::start_in(&dir).await;
    let time2 = tm::TimeManagerClient::new(app2.client().await);
    let after = tm::TimeManagerClient::now(&time2, tm::NowRequest::default(), &opts())
        .await
        .expect("now after restart")
        .clock
        .expect("clock");
    assert_eq!(after.scale, 3600.0, "the scale was not persisted");
    assert!(
        after.game_time.expect("game time").seconds >= before,
        "the game clock went back after a restart"
    );
}
