//! Weather on a real appliance: regions defined and listed, the current weather and
//! forecasts following the seeded per-season chain on time-manager's clock (paused and set
//! by the tests, so every expected value is exact), overrides that win until cleared or
//! expired and survive a crash and restart on the same data directory, every change on
//! `evt.weather.changed` in the `EVENTS` stream, and refusals naming the field or the
//! missing role.

use std::time::Duration;

use aicore_e2e::{Appliance, game_seconds};
use aicore_proto::aicore::time_manager::v1 as tm;
use aicore_proto::aicore::weather_manager::v1 as wm;
use aicore_proto::{CallOptions, Caller, Code, Status};
use async_nats::jetstream::consumer;
use futures::StreamExt;
use prost::Message;
use wm::WeatherCondition as C;

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// `[domains.time_manager] days_per_season` by default (weather reads the same value).
const DAYS_PER_SEASON: i64 = 30;
/// Day 0, 10:30: inside chain step 10 of an hourly region, in spring.
const T: i64 = 10 * HOUR + 1800;
/// The deterministic cycle of [`cycle_region`]: at step `k` the chain is `CYCLE[k % 3]`.
const CYCLE: [C; 3] = [C::Clear, C::Cloudy, C::Rain];
/// Mean temperatures of [`cycle_region`] (spread 0): spring, summer, autumn, winter.
const MEANS: [f64; 4] = [12.0, 25.0, 9.0, -4.0];

type Weather = wm::WeatherManagerClient<aicore_sdk::Client>;
type Time = tm::TimeManagerClient<aicore_sdk::Client>;
/// A change that makes a valid region invalid.
type Edit = fn(&mut wm::Region);

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(10))
}

/// Options of a call made for an end user holding `roles`.
fn as_user(account: &str, roles: &[&str]) -> CallOptions {
    CallOptions {
        caller: Some(Caller {
            account_id: account.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }),
        ..opts()
    }
}

fn climate(season: wm::Season, mean: f64, spread: f64, edges: &[(C, C, f64)]) -> wm::Climate {
    wm::Climate {
        season: season as i32,
        transitions: edges
            .iter()
            .map(|&(from, to, weight)| wm::Transition {
                from_condition: from as i32,
                to_condition: to as i32,
                weight,
            })
            .collect(),
        mean_temperature_c: mean,
        temperature_spread_c: spread,
    }
}

const SEASONS: [wm::Season; 4] = [
    wm::Season::Spring,
    wm::Season::Summer,
    wm::Season::Autumn,
    wm::Season::Winter,
];

/// A region whose chain has one edge out of each condition (`order[0]` → `order[1]` →
/// `order[2]` → `order[0]`, from `order[0]` at step 0) and no temperature spread, so its
/// weather at step `k` is known exactly: `order[k % 3]` at the season's mean.
pub(crate) fn cycle_region(id: &str, order: [C; 3], step_seconds: i64) -> wm::Region {
    let edges = [
        (order[0], order[1], 1.0),
        (order[1], order[2], 1.0),
        (order[2], order[0], 1.0),
    ];
    wm::Region {
        region_id: id.into(),
        name: format!("Cycle {id}"),
        climates: SEASONS
            .iter()
            .zip(MEANS)
            .map(|(&s, mean)| climate(s, mean, 0.0, &edges))
            .collect(),
        seed: 7,
        step_seconds,
        initial_condition: order[0] as i32,
        ..Default::default()
    }
}

/// A region with weighted choices out of every condition, different per season.
fn mixed_region(id: &str, seed: u64) -> wm::Region {
    let conds = [C::Clear, C::Cloudy, C::Rain, C::Storm];
    let climates = SEASONS
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let mut edges = Vec::new();
            for (a, &from) in conds.iter().enumerate() {
                for (b, &to) in conds.iter().enumerate() {
                    edges.push((from, to, 1.0 + ((a * 7 + b * 3 + i) % 5) as f64));
                }
            }
            climate(s, 10.0 + 5.0 * i as f64, 5.0, &edges)
        })
        .collect();
    wm::Region {
        region_id: id.into(),
        name: "Mixed".into(),
        climates,
        seed,
        step_seconds: 0,
        initial_condition: C::Clear as i32,
        ..Default::default()
    }
}

/// A region that stays CLEAR whatever the season.
pub(crate) fn calm_region(id: &str) -> wm::Region {
    wm::Region {
        region_id: id.into(),
        name: "Calm".into(),
        climates: SEASONS
            .iter()
            .map(|&s| climate(s, 20.0, 0.0, &[(C::Clear, C::Clear, 1.0)]))
            .collect(),
        seed: 1,
        step_seconds: 0,
        initial_condition: C::Clear as i32,
        ..Default::default()
    }
}

/// Index of the season game second `t` falls in (time-manager's calendar).
fn season_index(t: i64) -> usize {
    ((t / DAY / DAYS_PER_SEASON) % 4) as usize
}

/// What the cycle region's chain says for step `k` of `step_seconds`: condition,
/// temperature, and the step's bounds.
fn cycle_weather(order: [C; 3], step_seconds: i64, k: i64) -> (C, f64, i64, i64) {
    let from = k * step_seconds;
    (
        order[(k % 3) as usize],
        MEANS[season_index(from)],
        from,
        from + step_seconds,
    )
}

/// Asserts `w` is the chain's (not overridden) weather of the cycle region at step `k`.
fn assert_cycle(w: &wm::Weather, id: &str, order: [C; 3], step_seconds: i64, k: i64) {
    let (cond, temp, from, until) = cycle_weather(order, step_seconds, k);
    assert_eq!(w.region_id, id, "{w:?}");
    assert_eq!(w.condition, cond as i32, "step {k}: {w:?}");
    assert_eq!(w.temperature_c, temp, "step {k}: {w:?}");
    assert_eq!(
        (w.from_game_seconds, w.until_game_seconds),
        (from, until),
        "{w:?}"
    );
    assert!((0.0..=1.0).contains(&w.intensity), "{w:?}");
    assert!(!w.overridden, "{w:?}");
}

/// Pauses the game clock and sets it to `seconds`, so the weather stands still.
pub(crate) async fn freeze_at(time: &Time, seconds: i64) {
    time.pause(
        tm::PauseRequest {
            reason: "e2e weather".into(),
        },
        &opts(),
    )
    .await
    .expect("pause");
    let clock = time
        .set_time(
            tm::SetTimeRequest {
                game_seconds: seconds,
                reason: "e2e weather".into(),
            },
            &opts(),
        )
        .await
        .expect("set time")
        .clock
        .expect("clock");
    assert!(clock.paused);
    assert_eq!(clock.game_time.expect("game time").seconds, seconds);
}

pub(crate) async fn define(w: &Weather, region: wm::Region, expected: Option<u64>) -> wm::Region {
    w.define_region(
        wm::DefineRegionRequest {
            region: Some(region),
            expected_version: expected,
        },
        &opts(),
    )
    .await
    .expect("define region")
    .region
    .expect("the region")
}

async fn current(w: &Weather, id: &str) -> wm::Weather {
    w.current(
        wm::CurrentRequest {
            region_id: id.into(),
        },
        &opts(),
    )
    .await
    .expect("current")
    .weather
    .expect("weather")
}

async fn forecast(w: &Weather, id: &str, steps: i32) -> Vec<wm::Weather> {
    w.forecast(
        wm::ForecastRequest {
            region_id: id.into(),
            steps,
        },
        &opts(),
    )
    .await
    .expect("forecast")
    .steps
}

pub(crate) fn override_req(id: &str, cond: C) -> wm::SetOverrideRequest {
    wm::SetOverrideRequest {
        region_id: id.into(),
        condition: cond as i32,
        temperature_c: None,
        intensity: 0.0,
        duration_game_seconds: 0,
        reason: "e2e".into(),
    }
}

async fn clear(w: &Weather, id: &str) -> wm::ClearOverrideResponse {
    w.clear_override(
        wm::ClearOverrideRequest {
            region_id: id.into(),
        },
        &opts(),
    )
    .await
    .expect("clear override")
}

async fn list(w: &Weather, page_size: i32, page_token: &str) -> wm::ListRegionsResponse {
    w.list_regions(
        wm::ListRegionsRequest {
            page_size,
            page_token: page_token.into(),
        },
        &opts(),
    )
    .await
    .expect("list regions")
}

fn ids(regions: &[wm::Region]) -> Vec<&str> {
    regions.iter().map(|r| r.region_id.as_str()).collect()
}

/// Asserts a refusal: its code and the field it names.
fn assert_refused<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, field: &str) {
    let e = r.expect_err("a refusal");
    assert_eq!(e.code, code, "{e}");
    assert_eq!(
        e.field_violations.first().map(|v| v.field.as_str()),
        Some(field),
        "{e}"
    );
}

#[tokio::test]
async fn regions_are_listed_and_current_and_forecast_follow_the_seeded_chain() {
    let app = Appliance::start().await;
    let client = app.client().await;
    let w = Weather::new(client.clone());
    let time = Time::new(client);
    freeze_at(&time, T).await;

    let order = CYCLE;
    let cycle = define(&w, cycle_region("vale", order, 0), Some(0)).await;
    assert_eq!(cycle.version, 1);
    assert!(cycle.updated_at.is_some());
    let tide = define(&w, cycle_region("tide", order, 1800), None).await;
    assert_eq!(tide.step_seconds, 1800);
    define(&w, mixed_region("moor", 42), None).await;
    define(&w, mixed_region("moor-twin", 42), None).await;
    define(&w, mixed_region("moor-other", 43), None).await;
    // Create-only on an existing region is a Conflict, and changes nothing.
    let again = w
        .define_region(
            wm::DefineRegionRequest {
                region: Some(calm_region("vale")),
                expected_version: Some(0),
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(again.code, Code::Conflict, "{again}");

    // Listed in region_id order, as defined, and paged.
    let all = list(&w, 0, "").await;
    assert_eq!(
        ids(&all.regions),
        ["moor", "moor-other", "moor-twin", "tide", "vale"]
    );
    assert!(all.next_page_token.is_empty());
    let listed = all.regions.iter().find(|r| r.region_id == "vale").unwrap();
    assert_eq!(listed, &cycle);
    assert_eq!(listed.climates.len(), 4);
    assert_eq!(listed.seed, 7);
    let page1 = list(&w, 2, "").await;
    assert_eq!(ids(&page1.regions), ["moor", "moor-other"]);
    assert!(!page1.next_page_token.is_empty());
    let page2 = list(&w, 2, &page1.next_page_token).await;
    assert_eq!(ids(&page2.regions), ["moor-twin", "tide"]);
    let page3 = list(&w, 2, &page2.next_page_token).await;
    assert_eq!(ids(&page3.regions), ["vale"]);
    assert!(page3.next_page_token.is_empty());

    // Current: the chain at step 10 (10:30 on day 0, spring).
    let now = current(&w, "vale").await;
    assert_cycle(&now, "vale", order, HOUR, 10);
    assert_eq!(now.condition, C::Cloudy as i32);
    assert_eq!(now.temperature_c, 12.0);
    // Half-hour steps: 10:30 starts step 21.
    let half = current(&w, "tide").await;
    assert_cycle(&half, "tide", order, 1800, 21);
    assert_eq!(
        (half.from_game_seconds, half.until_game_seconds),
        (T, T + 1800)
    );

    // Forecast: the requested length, every step exactly the chain's, the first = Current.
    let f = forecast(&w, "vale", 30).await;
    assert_eq!(f.len(), 30);
    assert_eq!(f[0], now);
    for (i, step) in f.iter().enumerate() {
        assert_cycle(step, "vale", order, HOUR, 10 + i as i64);
    }
    assert_eq!(forecast(&w, "vale", 0).await.len(), 24, "the default");
    assert_eq!(forecast(&w, "vale", 1000).await.len(), 168, "the maximum");

    // Deterministic: the same call twice gives the same forecast; the same seed and
    // tables under another id give the same weather; another seed does not.
    let m1 = forecast(&w, "moor", 168).await;
    let m2 = forecast(&w, "moor", 168).await;
    assert_eq!(m1.len(), 168);
    assert_eq!(m1, m2);
    assert_eq!(m1[0], current(&w, "moor").await);
    let twin = forecast(&w, "moor-twin", 168).await;
    let strip = |v: &[wm::Weather]| {
        v.iter()
            .map(|s| {
                let mut s = s.clone();
                s.region_id.clear();
                s
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&m1), strip(&twin));
    let other = forecast(&w, "moor-other", 168).await;
    assert_ne!(strip(&m1), strip(&other));
    let used = [C::Clear, C::Cloudy, C::Rain, C::Storm].map(|c| c as i32);
    for (i, s) in m1.iter().enumerate() {
        assert!(used.contains(&s.condition), "{s:?}");
        assert_eq!(s.from_game_seconds, (10 + i as i64) * HOUR, "{s:?}");
        assert_eq!(s.until_game_seconds, s.from_game_seconds + HOUR, "{s:?}");
        // Spring (days 0–7 of 30): mean 10, spread 5, one decimal.
        assert!((5.0..=15.0).contains(&s.temperature_c), "{s:?}");
        assert_eq!((s.temperature_c * 10.0).round() / 10.0, s.temperature_c);
        assert!((0.0..=1.0).contains(&s.intensity), "{s:?}");
        assert!(!s.overridden);
    }
    // A 168-step weighted chain over four conditions does change.
    assert!(m1.iter().any(|s| s.condition != m1[0].condition));

    // Seasons follow time-manager's calendar: across day 29 → day 30 spring turns to
    // summer and the climate table (here its mean temperature) changes with it.
    let late = 29 * DAY + 22 * HOUR + 1800;
    freeze_at(&time, late).await;
    let f = forecast(&w, "vale", 4).await;
    let k0 = late / HOUR;
    for (i, step) in f.iter().enumerate() {
        assert_cycle(step, "vale", order, HOUR, k0 + i as i64);
    }
    let temps: Vec<f64> = f.iter().map(|s| s.temperature_c).collect();
    assert_eq!(temps, [12.0, 12.0, 25.0, 25.0]);
}

#[tokio::test]
async fn an_override_wins_until_cleared_or_expired_and_survives_a_restart() {
    // A data dir this test owns, so it outlives the first appliance.
    let temp = tempfile::tempdir().expect("a temp dir");
    let dir = temp.path().to_path_buf();
    let mut app = Appliance::start_in(&dir).await;
    let client = app.client().await;
    let w = Weather::new(client.clone());
    let time = Time::new(client);
    freeze_at(&time, T).await;
    define(&w, cycle_region("vale", CYCLE, 0), None).await;
    let computed = current(&w, "vale").await;
    assert_cycle(&computed, "vale", CYCLE, HOUR, 10);

    // Until cleared (duration 0), with its own temperature and intensity.
    let set = w
        .set_override(
            wm::SetOverrideRequest {
                temperature_c: Some(-5.5),
                intensity: 0.9,
                reason: "the dragon's storm".into(),
                ..override_req("vale", C::Storm)
            },
            &opts(),
        )
        .await
        .expect("set override")
        .weather
        .expect("weather");
    let forced = wm::Weather {
        condition: C::Storm as i32,
        temperature_c: -5.5,
        intensity: 0.9,
        overridden: true,
        ..computed.clone()
    };
    assert_eq!(set, forced);
    assert_eq!(current(&w, "vale").await, forced);
    // It holds over the whole forecast, each step keeping its own bounds.
    let f = forecast(&w, "vale", 5).await;
    assert_eq!(f.len(), 5);
    for (i, s) in f.iter().enumerate() {
        assert_eq!(
            (s.condition, s.temperature_c, s.intensity, s.overridden),
            (C::Storm as i32, -5.5, 0.9, true),
            "{s:?}"
        );
        assert_eq!(s.from_game_seconds, (10 + i as i64) * HOUR);
    }

    // Crash (SIGKILL) and restart on the same data dir: the override is still in force
    // (the clock was paused, so game time has not moved).
    app.crash().await;
    let app2 = Appliance::start_in(&dir).await;
    let client = app2.client().await;
    let w = Weather::new(client.clone());
    let time = Time::new(client);
    assert_eq!(game_seconds(&time).await, T);
    assert_eq!(ids(&list(&w, 0, "").await.regions), ["vale"]);
    assert_eq!(current(&w, "vale").await, forced);

    // Cleared: the chain's weather again, exactly as before the override.
    let cleared = clear(&w, "vale").await;
    assert!(cleared.cleared);
    assert_eq!(cleared.weather.as_ref(), Some(&computed));
    assert_eq!(current(&w, "vale").await, computed);
    // Clearing again is not an error, and says there was nothing to clear.
    let again = clear(&w, "vale").await;
    assert!(!again.cleared);
    assert_eq!(again.weather.as_ref(), Some(&computed));

    // For a span of game time: 10:30 + 1h30 ends at 12:00. Intensity 0 means 0.5, no
    // temperature means the chain's.
    let fog = w
        .set_override(
            wm::SetOverrideRequest {
                duration_game_seconds: 5400,
                ..override_req("vale", C::Fog)
            },
            &opts(),
        )
        .await
        .expect("set override")
        .weather
        .expect("weather");
    assert_eq!(
        (
            fog.condition,
            fog.temperature_c,
            fog.intensity,
            fog.overridden
        ),
        (C::Fog as i32, 12.0, 0.5, true)
    );
    let f = forecast(&w, "vale", 3).await;
    assert_eq!(
        f.iter()
            .map(|s| (s.condition, s.overridden))
            .collect::<Vec<_>>(),
        [
            (C::Fog as i32, true),
            (C::Fog as i32, true),
            (C::Clear as i32, false),
        ]
    );
    assert_cycle(&f[2], "vale", CYCLE, HOUR, 12);
    // At 12:00 it has expired by itself; clearing it then clears nothing.
    freeze_at(&time, 12 * HOUR).await;
    let after = current(&w, "vale").await;
    assert_cycle(&after, "vale", CYCLE, HOUR, 12);
    assert!(!clear(&w, "vale").await.cleared);
}

/// The next `evt.weather.changed` on the consumer (bounded wait), acknowledged.
async fn next_change(
    messages: &mut consumer::pull::Stream,
    app: &Appliance,
) -> wm::WeatherChangedEvent {
    let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .unwrap_or_else(|_| panic!("no evt.weather.changed in time\n{}", app.log()))
        .expect("the consumer is open")
        .expect("a message");
    assert_eq!(m.subject.as_str(), "evt.weather.changed");
    assert_eq!(m.info().expect("JetStream metadata").stream, "EVENTS");
    let event = wm::WeatherChangedEvent::decode(m.payload.clone()).expect("an event");
    m.ack().await.expect("ack");
    event
}

fn change(e: &wm::WeatherChangedEvent) -> (&str, i32, i32, i64) {
    (
        e.region_id.as_str(),
        e.old_condition,
        e.new_condition,
        e.game_seconds,
    )
}

#[tokio::test]
async fn weather_changes_are_published_on_the_events_stream() {
    let app = Appliance::start().await;
    let client = app.client().await;
    let w = Weather::new(client.clone());
    let time = Time::new(client);
    freeze_at(&time, T).await;

    // A durable consumer on EVENTS, from the start of the stream.
    let mut messages = app.events("e2e-weather", "evt.weather.changed").await;

    // Defining a region publishes nothing (there is no earlier weather to change from);
    // the first event must be the override's, for the right region.
    define(&w, calm_region("coast"), None).await;
    define(&w, cycle_region("vale", CYCLE, 0), None).await;
    let storm = w
        .set_override(override_req("vale", C::Storm), &opts())
        .await
        .expect("set override")
        .weather
        .expect("weather");
    let e = next_change(&mut messages, &app).await;
    assert_eq!(
        change(&e),
        ("vale", C::Cloudy as i32, C::Storm as i32, T),
        "{e:?}"
    );
    assert_eq!(e.weather.as_ref(), Some(&storm));

    // Cleared: back to the chain's condition.
    clear(&w, "vale").await;
    let e = next_change(&mut messages, &app).await;
    assert_eq!(
        change(&e),
        ("vale", C::Storm as i32, C::Cloudy as i32, T),
        "{e:?}"
    );
    let w_after = e.weather.expect("weather");
    assert_cycle(&w_after, "vale", CYCLE, HOUR, 10);

    // The clock reaches the next step: the background observer publishes the chain's
    // step (CLOUDY → RAIN) at the step's start; "coast" stays CLEAR and publishes nothing.
    freeze_at(&time, 11 * HOUR).await;
    let e = next_change(&mut messages, &app).await;
    assert_eq!(
        change(&e),
        ("vale", C::Cloudy as i32, C::Rain as i32, 11 * HOUR),
        "{e:?}"
    );
    assert_cycle(&e.weather.expect("weather"), "vale", CYCLE, HOUR, 11);

    // An override that does not change the condition publishes nothing: the next event is
    // the one of the override after it, from CLEAR.
    w.set_override(override_req("coast", C::Clear), &opts())
        .await
        .expect("same-condition override");
    w.set_override(override_req("coast", C::Snow), &opts())
        .await
        .expect("snow override");
    let e = next_change(&mut messages, &app).await;
    assert_eq!(
        change(&e),
        ("coast", C::Clear as i32, C::Snow as i32, 11 * HOUR),
        "{e:?}"
    );
    assert!(e.weather.expect("weather").overridden);

    // A redefinition that changes the chain's condition now publishes it: the new cycle
    // CLEAR → FOG → WIND is at WIND in step 11 (11 % 3 = 2).
    let order = [C::Clear, C::Fog, C::Wind];
    let v2 = define(&w, cycle_region("vale", order, 0), Some(1)).await;
    assert_eq!(v2.version, 2);
    let e = next_change(&mut messages, &app).await;
    assert_eq!(
        change(&e),
        ("vale", C::Rain as i32, C::Wind as i32, 11 * HOUR),
        "{e:?}"
    );
    assert_cycle(&e.weather.expect("weather"), "vale", order, HOUR, 11);
    assert_cycle(&current(&w, "vale").await, "vale", order, HOUR, 11);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_writes_need_an_admin_or_service_role() {
    let app = Appliance::start().await;
    let client = app.client().await;
    let w = Weather::new(client.clone());
    let time = Time::new(client);
    freeze_at(&time, T).await;
    define(&w, cycle_region("vale", CYCLE, 0), None).await;
    let o = opts();

    // Region ids: unknown → NotFound, malformed or empty → InvalidArgument.
    let cur = |id: &str| {
        w.current(
            wm::CurrentRequest {
                region_id: id.into(),
            },
            &o,
        )
    };
    assert_refused(cur("nowhere").await, Code::NotFound, "region_id");
    assert_refused(cur("").await, Code::InvalidArgument, "region_id");
    assert_refused(cur("Vale!").await, Code::InvalidArgument, "region_id");
    assert_refused(
        cur(&"a".repeat(65)).await,
        Code::InvalidArgument,
        "region_id",
    );
    let fc = |id: &str, steps: i32| {
        w.forecast(
            wm::ForecastRequest {
                region_id: id.into(),
                steps,
            },
            &o,
        )
    };
    assert_refused(fc("nowhere", 3).await, Code::NotFound, "region_id");
    assert_refused(fc("vale", -1).await, Code::InvalidArgument, "steps");
    assert_refused(
        w.clear_override(
            wm::ClearOverrideRequest {
                region_id: "nowhere".into(),
            },
            &o,
        )
        .await,
        Code::NotFound,
        "region_id",
    );

    // SetOverride's fields.
    let set = |r: wm::SetOverrideRequest| w.set_override(r, &o);
    assert_refused(
        set(override_req("nowhere", C::Storm)).await,
        Code::NotFound,
        "region_id",
    );
    assert_refused(
        set(override_req("vale", C::Unspecified)).await,
        Code::InvalidArgument,
        "condition",
    );
    assert_refused(
        set(wm::SetOverrideRequest {
            intensity: 1.5,
            ..override_req("vale", C::Storm)
        })
        .await,
        Code::InvalidArgument,
        "intensity",
    );
    assert_refused(
        set(wm::SetOverrideRequest {
            temperature_c: Some(500.0),
            ..override_req("vale", C::Storm)
        })
        .await,
        Code::InvalidArgument,
        "temperature_c",
    );
    assert_refused(
        set(wm::SetOverrideRequest {
            duration_game_seconds: -1,
            ..override_req("vale", C::Storm)
        })
        .await,
        Code::InvalidArgument,
        "duration_game_seconds",
    );
    assert_refused(
        set(wm::SetOverrideRequest {
            reason: "x".repeat(513),
            ..override_req("vale", C::Storm)
        })
        .await,
        Code::InvalidArgument,
        "reason",
    );

    // DefineRegion's fields, down to the offending transition.
    let def = |r: Option<wm::Region>| {
        w.define_region(
            wm::DefineRegionRequest {
                region: r,
                expected_version: None,
            },
            &o,
        )
    };
    assert_refused(def(None).await, Code::InvalidArgument, "region");
    let bad = |f: Edit| {
        let mut r = cycle_region("hills", CYCLE, 0);
        f(&mut r);
        Some(r)
    };
    let cases: [(Edit, &str); 10] = [
        (|r| r.region_id = "Hills".into(), "region.region_id"),
        (|r| r.region_id.clear(), "region.region_id"),
        (
            |r| r.initial_condition = C::Unspecified as i32,
            "region.initial_condition",
        ),
        (|r| r.step_seconds = 5, "region.step_seconds"),
        (|r| r.climates.truncate(3), "region.climates"),
        (
            |r| r.climates[3].season = wm::Season::Spring as i32,
            "region.climates[3].season",
        ),
        (
            |r| r.climates[1].transitions[0].weight = 0.0,
            "region.climates[1].transitions[0].weight",
        ),
        (
            |r| r.climates[2].temperature_spread_c = -1.0,
            "region.climates[2].temperature_spread_c",
        ),
        (
            |r| r.climates[0].mean_temperature_c = 1000.0,
            "region.climates[0].mean_temperature_c",
        ),
        // STORM is used (reachable in winter) but cannot be left in spring.
        (
            |r| r.climates[3].transitions[0].to_condition = C::Storm as i32,
            "region.climates[0].transitions",
        ),
    ];
    for (f, field) in cases {
        assert_refused(def(bad(f)).await, Code::InvalidArgument, field);
    }
    let stale = w
        .define_region(
            wm::DefineRegionRequest {
                region: Some(cycle_region("vale", CYCLE, 0)),
                expected_version: Some(5),
            },
            &o,
        )
        .await
        .unwrap_err();
    assert_eq!(stale.code, Code::Conflict, "{stale}");
    assert!(stale.message.contains("version 1"), "{stale}");

    // ListRegions' paging fields.
    let lr = |page_size: i32, token: &str| {
        w.list_regions(
            wm::ListRegionsRequest {
                page_size,
                page_token: token.into(),
            },
            &o,
        )
    };
    assert_refused(lr(-1, "").await, Code::InvalidArgument, "page_size");
    assert_refused(
        lr(10, "not-a-token").await,
        Code::InvalidArgument,
        "page_token",
    );
    // Nothing refused was written.
    let listed = list(&w, 0, "").await;
    assert_eq!(ids(&listed.regions), ["vale"]);
    assert_eq!(listed.regions[0].version, 1);
    assert_cycle(&current(&w, "vale").await, "vale", CYCLE, HOUR, 10);

    // Roles (the proto policy): a player may read the weather but not change it.
    let player = as_user("acc_player", &["player"]);
    let refused = |r: Result<(), Status>| {
        let e = r.expect_err("refused for a player");
        assert_eq!(e.code, Code::PermissionDenied, "{e}");
    };
    refused(
        w.set_override(override_req("vale", C::Storm), &player)
            .await
            .map(drop),
    );
    refused(
        w.clear_override(
            wm::ClearOverrideRequest {
                region_id: "vale".into(),
            },
            &player,
        )
        .await
        .map(drop),
    );
    refused(
        w.define_region(
            wm::DefineRegionRequest {
                region: Some(calm_region("player-made")),
                expected_version: None,
            },
            &player,
        )
        .await
        .map(drop),
    );
    let seen = w
        .current(
            wm::CurrentRequest {
                region_id: "vale".into(),
            },
            &player,
        )
        .await
        .expect("a player reads the weather")
        .weather
        .expect("weather");
    assert_cycle(&seen, "vale", CYCLE, HOUR, 10);
    let f = w
        .forecast(
            wm::ForecastRequest {
                region_id: "vale".into(),
                steps: 2,
            },
            &player,
        )
        .await
        .expect("a player reads the forecast");
    assert_eq!(f.steps.len(), 2);
    let l = w
        .list_regions(wm::ListRegionsRequest::default(), &player)
        .await
        .expect("a player lists regions");
    assert_eq!(
        ids(&l.regions),
        ["vale"],
        "the refused definition was written"
    );

    // A service (e.g. a game server's scripted event) may.
    let service = as_user("svc_arena", &["service"]);
    let forced = w
        .set_override(override_req("vale", C::Wind), &service)
        .await
        .expect("a service sets an override")
        .weather
        .expect("weather");
    assert_eq!(
        (forced.condition, forced.overridden),
        (C::Wind as i32, true)
    );
    assert_eq!(current(&w, "vale").await, forced);
}
