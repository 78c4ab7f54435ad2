//! Unit tests of time-manager, on an in-memory store and a manual clock: the ticker is
//! driven by calling `step` instead of sleeping.

use prost::Message;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use aicore_runtime::outbox::{OUTBOX, OutboxEvent};
use aicore_runtime::{Clock as _, ManualClock};

fn domain() -> (Arc<TimeManager>, Arc<ManualClock>) {
    let (ctx, clock) = Ctx::for_tests();
    (Arc::new(TimeManager::new(ctx, Default::default())), clock)
}

fn events(tm: &TimeManager, subject: &str) -> Vec<Vec<u8>> {
    tm.ctx
        .store
        .scan(OUTBOX, b"", b"", 100_000)
        .unwrap()
        .into_iter()
        .map(|(_, v)| aicore_runtime::store::decode::<OutboxEvent>(OUTBOX, v).unwrap())
        .filter(|e| e.subject == subject)
        .map(|e| e.payload)
        .collect()
}

fn fired(tm: &TimeManager) -> Vec<ScheduledEvent> {
    events(tm, SCHEDULED_SUBJECT)
        .into_iter()
        .map(|p| ScheduledEvent::decode(p.as_slice()).unwrap())
        .collect()
}

fn ticks(tm: &TimeManager) -> Vec<TickEvent> {
    events(tm, TICK_SUBJECT)
        .into_iter()
        .map(|p| TickEvent::decode(p.as_slice()).unwrap())
        .collect()
}

async fn game_ms(tm: &TimeManager) -> i64 {
    let c = tm.clock().await.unwrap();
    c.game_ms_at(unix_ms(tm.ctx.clock.now()))
}

async fn now_s(tm: &TimeManager) -> i64 {
    tm.now(Request::new(NowRequest::default()))
        .await
        .unwrap()
        .clock
        .unwrap()
        .game_time
        .unwrap()
        .seconds
}

fn schedule_req(at: i64, name: &str, key: &str) -> ScheduleRequest {
    ScheduleRequest {
        fire_at_seconds: at,
        repeat_every_seconds: 0,
        name: name.into(),
        payload: Bytes::from_static(b"payload"),
        content_type: "text/plain".into(),
        idempotency_key: key.into(),
    }
}

async fn schedule(tm: &TimeManager, at: i64, name: &str, key: &str) -> Timer {
    tm.schedule(Request::new(schedule_req(at, name, key)))
        .await
        .unwrap()
        .timer
        .unwrap()
}

async fn set_time(tm: &TimeManager, s: i64) -> SetTimeResponse {
    tm.set_time(Request::new(SetTimeRequest {
        game_seconds: s,
        reason: "test".into(),
    }))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_new_clock_starts_at_the_configured_time_and_runs_at_the_scale() {
    let (tm, clock) = domain();
    assert_eq!(now_s(&tm).await, 6 * 3600);
    clock.advance(Duration::from_secs(10));
    // 60 game seconds per real second.
    assert_eq!(now_s(&tm).await, 6 * 3600 + 600);
    let c = tm
        .now(Request::new(NowRequest::default()))
        .await
        .unwrap()
        .clock
        .unwrap();
    let g = c.game_time.unwrap();
    assert_eq!((g.day, g.hour, g.minute), (0, 6, 10));
    assert_eq!(g.season, Season::Spring as i32);
    assert_eq!(c.scale, 60.0);
    // Projection of another instant with the same scale.
    let at = aicore_runtime::timestamp(clock.now() + Duration::from_secs(60));
    let later = tm
        .now(Request::new(NowRequest { at: Some(at) }))
        .await
        .unwrap();
    assert_eq!(
        later.clock.unwrap().game_time.unwrap().seconds,
        6 * 3600 + 600 + 3600
    );
}

#[test]
fn the_calendar_breaks_seconds_into_days_seasons_and_years() {
    let g = game_time(DAY_SECONDS * 30 + 3661, 30);
    assert_eq!((g.day, g.hour, g.minute, g.second), (30, 1, 1, 1));
    assert_eq!(g.season, Season::Summer as i32);
    assert_eq!(g.day_of_season, 0);
    let w = game_time(DAY_SECONDS * (120 + 95), 30);
    assert_eq!(
        (w.year, w.season, w.day_of_season),
        (1, Season::Winter as i32, 5)
    );
}

#[tokio::test]
async fn clock_changes_keep_game_time_continuous_and_bump_the_version() {
    let (tm, clock) = domain();
    clock.advance(Duration::from_millis(1500));
    let before = game_ms(&tm).await;
    let r = tm
        .set_scale(Request::new(SetScaleRequest { scale: 3600.0 }))
        .await
        .unwrap();
    assert_eq!(game_ms(&tm).await, before, "SetScale jumped the clock");
    assert_eq!(r.clock.unwrap().version, 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(game_ms(&tm).await, before + 7_200_000);

    // Pause: time stops; pausing again changes nothing (no version bump, no event).
    let paused_at = game_ms(&tm).await;
    let p = tm
        .pause(Request::new(PauseRequest::default()))
        .await
        .unwrap();
    assert!(p.clock.as_ref().unwrap().paused);
    let again = tm
        .pause(Request::new(PauseRequest::default()))
        .await
        .unwrap();
    assert_eq!(again.clock.unwrap().version, p.clock.unwrap().version);
    clock.advance(Duration::from_secs(100));
    assert_eq!(game_ms(&tm).await, paused_at);

    // Resume continues from where it stopped.
    tm.resume(Request::new(ResumeRequest::default()))
        .await
        .unwrap();
    assert_eq!(game_ms(&tm).await, paused_at);
    clock.advance(Duration::from_secs(1));
    assert_eq!(game_ms(&tm).await, paused_at + 3_600_000);

    // SetTime jumps, then runs on at the scale.
    let r = set_time(&tm, 100 * DAY_SECONDS).await;
    assert_eq!(r.clock.unwrap().version, 4);
    assert_eq!(game_ms(&tm).await, 100 * DAY_SECONDS * 1000);
    clock.advance(Duration::from_millis(500));
    assert_eq!(game_ms(&tm).await, 100 * DAY_SECONDS * 1000 + 1_800_000);

    let changes: Vec<String> = events(&tm, CLOCK_CHANGED_SUBJECT)
        .into_iter()
        .map(|p| ClockChangedEvent::decode(p.as_slice()).unwrap().change)
        .collect();
    assert_eq!(changes, ["set_scale", "pause", "resume", "set_time"]);
}

#[tokio::test]
async fn clock_refusals_name_the_field_and_check_roles() {
    let (tm, _) = domain();
    for scale in [0.0, -1.0, f64::NAN, MAX_SCALE * 2.0] {
        let e = tm
            .set_scale(Request::new(SetScaleRequest { scale }))
            .await
            .unwrap_err();
        assert_eq!(e.field_violations[0].field, "scale");
    }
    let e = tm
        .set_time(Request::new(SetTimeRequest {
            game_seconds: -1,
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "game_seconds");
    assert!(!tm.clock().await.unwrap().paused);
}

#[tokio::test]
async fn one_tick_per_game_hour_and_bounded_catch_up() {
    let (tm, clock) = domain();
    tm.step(clock.now()).await.unwrap();
    assert!(
        ticks(&tm).is_empty(),
        "no tick for the hour the world starts in"
    );
    // 60 real seconds = one game hour at scale 60.
    clock.advance(Duration::from_secs(30));
    assert_eq!(tm.step(clock.now()).await.unwrap().ticks, 0);
    clock.advance(Duration::from_secs(30));
    assert_eq!(tm.step(clock.now()).await.unwrap().ticks, 1);
    assert_eq!(tm.step(clock.now()).await.unwrap().ticks, 0);
    let t = ticks(&tm);
    assert_eq!(t[0].game_time.as_ref().unwrap().hour, 7);
    assert!(!t[0].catch_up);

    // Three hours at once (a stall): three ticks, the older two flagged catch-up.
    clock.advance(Duration::from_secs(180));
    assert_eq!(tm.step(clock.now()).await.unwrap().ticks, 3);
    let t = ticks(&tm);
    let hours: Vec<i32> = t.iter().map(|t| t.game_time.unwrap().hour).collect();
    assert_eq!(hours, [7, 8, 9, 10]);
    assert_eq!(
        t.iter().map(|t| t.catch_up).collect::<Vec<_>>(),
        [false, true, true, false]
    );

    // Downtime of 100 game hours: at most max_catch_up_ticks (24), the latest ones.
    clock.advance(Duration::from_secs(100 * 60));
    assert_eq!(tm.step(clock.now()).await.unwrap().ticks, 24);
    let last = ticks(&tm).last().unwrap().game_time.unwrap();
    assert_eq!(last.seconds, (10 + 100) * HOUR_SECONDS);

    // A jump publishes no ticks for the skipped hours.
    set_time(&tm, 1000 * HOUR_SECONDS).await;
    assert_eq!(tm.step(clock.now()).await.unwrap().ticks, 0);
}

#[tokio::test]
async fn schedules_fire_once_when_due_and_not_before() {
    let (tm, clock) = domain();
    let start = now_s(&tm).await;
    let t = schedule(&tm, start + 600, "market.open", "k1").await;
    // A replay of the same key returns the same timer.
    assert_eq!(
        schedule(&tm, start + 600, "market.open", "k1")
            .await
            .schedule_id,
        t.schedule_id
    );
    tm.step(clock.now()).await.unwrap();
    assert!(fired(&tm).is_empty());
    clock.advance(Duration::from_secs(9));
    tm.step(clock.now()).await.unwrap();
    assert!(fired(&tm).is_empty(), "fired before it was due");
    clock.advance(Duration::from_secs(1));
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 1);
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 0);
    clock.advance(Duration::from_secs(3600));
    tm.step(clock.now()).await.unwrap();
    let f = fired(&tm);
    assert_eq!(f.len(), 1, "fired more than once");
    let timer = f[0].timer.as_ref().unwrap();
    assert_eq!(timer.schedule_id, t.schedule_id);
    assert_eq!(timer.name, "market.open");
    assert_eq!(timer.payload.as_ref(), b"payload");
    assert_eq!(f[0].fired_at.unwrap().seconds, start + 600);
    // Gone from the list; cancelling a fired one-shot changes nothing.
    let list = tm
        .list_schedules(Request::new(ListSchedulesRequest::default()))
        .await
        .unwrap();
    assert!(list.timers.is_empty());
    let c = tm
        .cancel_schedule(Request::new(CancelScheduleRequest {
            schedule_id: t.schedule_id,
        }))
        .await
        .unwrap();
    assert!(!c.cancelled);
}

#[tokio::test]
async fn timers_due_during_downtime_or_a_jump_fire_exactly_once() {
    let (tm, clock) = domain();
    let start = now_s(&tm).await;
    for i in 0..300 {
        schedule(&tm, start + 60 + i, &format!("t{i}"), &format!("k{i}")).await;
    }
    let late = schedule(&tm, start + 10 * DAY_SECONDS, "late", "late").await;
    // "Downtime": the real clock jumps an hour with no step in between; the first step
    // fires all 300 (more than one batch of 256), each once.
    clock.advance(Duration::from_secs(3600));
    let r = tm.step(clock.now()).await.unwrap();
    assert_eq!(r.fired, 300);
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 0);
    let f = fired(&tm);
    let mut names: Vec<String> = f.iter().map(|e| e.timer.clone().unwrap().name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 300);
    assert_eq!(f.len(), 300);

    // A SetTime past a timer fires it in the jump's own transaction.
    let r = set_time(&tm, start + 11 * DAY_SECONDS).await;
    assert_eq!(r.timers_fired, 1);
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 0);
    let f = fired(&tm);
    assert_eq!(f.len(), 301);
    assert_eq!(
        f.last().unwrap().timer.as_ref().unwrap().schedule_id,
        late.schedule_id
    );
}

#[tokio::test]
async fn a_repeating_timer_fires_each_period_and_coalesces_missed_ones() {
    let (tm, clock) = domain();
    let start = now_s(&tm).await;
    let mut req = schedule_req(start + 60, "hourly", "rep");
    req.repeat_every_seconds = 3600;
    let t = tm.schedule(Request::new(req)).await.unwrap().timer.unwrap();
    clock.advance(Duration::from_secs(1));
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 1);
    clock.advance(Duration::from_secs(60));
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 1);
    // Five periods of downtime: one firing, next occurrence in the future.
    clock.advance(Duration::from_secs(5 * 60));
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 1);
    let list = tm
        .list_schedules(Request::new(ListSchedulesRequest::default()))
        .await
        .unwrap();
    assert_eq!(list.timers.len(), 1);
    let next = list.timers[0].fire_at.unwrap().seconds;
    assert!(next > now_s(&tm).await);
    assert_eq!((next - (start + 60)) % 3600, 0);
    let c = tm
        .cancel_schedule(Request::new(CancelScheduleRequest {
            schedule_id: t.schedule_id.clone(),
        }))
        .await
        .unwrap();
    assert!(c.cancelled);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 0);
}

#[tokio::test]
async fn cancelled_timers_never_fire_and_listing_is_soonest_first_and_paged() {
    let (tm, clock) = domain();
    let start = now_s(&tm).await;
    let a = schedule(&tm, start + 300, "a.one", "a").await;
    let _b = schedule(&tm, start + 100, "b.one", "b").await;
    let _c = schedule(&tm, start + 200, "a.two", "c").await;
    let page = tm
        .list_schedules(Request::new(ListSchedulesRequest {
            name_prefix: String::new(),
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap();
    let names: Vec<&str> = page.timers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["b.one", "a.two"]);
    let rest = tm
        .list_schedules(Request::new(ListSchedulesRequest {
            name_prefix: String::new(),
            page_size: 2,
            page_token: page.next_page_token,
        }))
        .await
        .unwrap();
    assert_eq!(rest.timers.len(), 1);
    assert!(rest.next_page_token.is_empty());
    let only_a = tm
        .list_schedules(Request::new(ListSchedulesRequest {
            name_prefix: "a.".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(only_a.timers.len(), 2);

    let cancel = |id: String| {
        let tm = tm.clone();
        async move {
            tm.cancel_schedule(Request::new(CancelScheduleRequest { schedule_id: id }))
                .await
                .unwrap()
                .cancelled
        }
    };
    assert!(cancel(a.schedule_id.clone()).await);
    assert!(!cancel(a.schedule_id.clone()).await);
    clock.advance(Duration::from_secs(3600));
    tm.step(clock.now()).await.unwrap();
    let names: Vec<String> = fired(&tm)
        .into_iter()
        .map(|e| e.timer.unwrap().name)
        .collect();
    assert_eq!(names, ["b.one", "a.two"]);
}

#[tokio::test]
async fn schedule_refusals_name_the_field_and_write_nothing() {
    let (tm, _) = domain();
    let start = now_s(&tm).await;
    let cases: Vec<(ScheduleRequest, &str)> = vec![
        (schedule_req(-5, "x", "k"), "fire_at_seconds"),
        (schedule_req(start + 60, "", "k"), "name"),
        (schedule_req(start + 60, &"n".repeat(129), "k"), "name"),
        (schedule_req(start + 60, "x", ""), "idempotency_key"),
        (
            ScheduleRequest {
                repeat_every_seconds: 30,
                ..schedule_req(start + 60, "x", "k")
            },
            "repeat_every_seconds",
        ),
        (
            ScheduleRequest {
                payload: Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES + 1]),
                ..schedule_req(start + 60, "x", "k")
            },
            "payload",
        ),
    ];
    for (req, field) in cases {
        let e = tm.schedule(Request::new(req)).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, field, "{e}");
    }
    // The same key with other parameters is a Conflict.
    schedule(&tm, start + 60, "x", "same").await;
    let e = tm
        .schedule(Request::new(schedule_req(start + 120, "x", "same")))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    let list = tm
        .list_schedules(Request::new(ListSchedulesRequest::default()))
        .await
        .unwrap();
    assert_eq!(list.timers.len(), 1);
}

#[tokio::test]
async fn the_clock_persists_in_the_store_across_domain_instances() {
    let (tm, clock) = domain();
    tm.set_scale(Request::new(SetScaleRequest { scale: 120.0 }))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    let before = now_s(&tm).await;
    // A new instance on the same store (a restart) continues, counting the downtime.
    let again = TimeManager::new(tm.ctx.clone(), tm.config.clone());
    assert_eq!(now_s(&again).await, before);
    clock.advance(Duration::from_secs(5));
    assert_eq!(now_s(&again).await, before + 600);
}

#[tokio::test]
async fn the_ticker_task_ends_with_the_shutdown_token() {
    let (tm, _) = domain();
    let task = tokio::spawn(tm.clone().run());
    tm.ctx.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the ticker ended")
        .unwrap();
}

#[tokio::test]
async fn steps_scan_from_the_last_fired_timer_and_an_earlier_schedule_moves_that_down() {
    let (tm, clock) = domain();
    let start = now_s(&tm).await;
    let mut last = String::new();
    for i in 0..3 {
        last = schedule(&tm, start + 60 + i, &format!("t{i}"), &format!("k{i}"))
            .await
            .schedule_id;
    }
    let later = schedule(&tm, start + 7200, "later", "later").await;
    clock.advance(Duration::from_secs(60));
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 3);
    // The next scan starts at the last timer fired, not at the table's start.
    let from = tm.ctx.store.get(TICKER, DUE_FROM).unwrap().unwrap();
    assert_eq!(from.as_ref(), due_key(start + 62, &last).as_slice());
    // A timer due before that (scheduled late, for a past time) is listed and fires.
    let early = schedule(&tm, start + 1, "early", "early").await;
    let listed = tm
        .list_schedules(Request::new(ListSchedulesRequest::default()))
        .await
        .unwrap()
        .timers;
    let ids: Vec<&str> = listed.iter().map(|t| t.schedule_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![early.schedule_id.as_str(), later.schedule_id.as_str()]
    );
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 1);
    let f = fired(&tm);
    assert_eq!(
        f.last().unwrap().timer.as_ref().unwrap().schedule_id,
        early.schedule_id
    );
    // A store without the row (written before it existed) scans from the start.
    tm.ctx
        .store
        .write(|tx| {
            tx.delete(TICKER, DUE_FROM);
            Ok(())
        })
        .await
        .unwrap();
    clock.advance(Duration::from_secs(7200));
    assert_eq!(tm.step(clock.now()).await.unwrap().fired, 1);
    assert_eq!(fired(&tm).len(), 5);
}
