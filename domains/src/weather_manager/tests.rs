//! Unit and property tests of weather-manager, on an in-memory store and a manual game
//! clock: the background task is driven by calling `step`.

use prost::Message;
use std::sync::Arc;

use aicore_proto::aicore::weather_manager::v1::Transition;
use proptest::prelude::*;

use super::*;
use aicore_runtime::outbox::{OUTBOX, OutboxEvent};

use WeatherCondition as W;

const ALL: [W; 7] = [
    W::Clear,
    W::Cloudy,
    W::Fog,
    W::Rain,
    W::Storm,
    W::Snow,
    W::Wind,
];

fn domain() -> (Arc<WeatherManager>, Arc<ManualGameClock>) {
    let (ctx, _) = Ctx::for_tests();
    let clock = Arc::new(ManualGameClock::default());
    (
        Arc::new(WeatherManager::new(ctx, Default::default(), clock.clone())),
        clock,
    )
}

fn tr(from: W, to: W, weight: f64) -> Transition {
    Transition {
        from_condition: from as i32,
        to_condition: to as i32,
        weight,
    }
}

/// A climate over clear/cloudy/rain where every condition can go anywhere.
fn climate(season: Season) -> Climate {
    let s = [W::Clear, W::Cloudy, W::Rain];
    Climate {
        season: season as i32,
        transitions: s
            .iter()
            .flat_map(|&a| {
                s.iter()
                    .map(move |&b| tr(a, b, if a == b { 2.0 } else { 1.0 }))
            })
            .collect(),
        mean_temperature_c: 12.0,
        temperature_spread_c: 5.0,
    }
}

fn region(id: &str, seed: u64) -> Region {
    Region {
        region_id: id.into(),
        name: "Test vale".into(),
        climates: [
            Season::Spring,
            Season::Summer,
            Season::Autumn,
            Season::Winter,
        ]
        .into_iter()
        .map(climate)
        .collect(),
        seed,
        step_seconds: 0,
        initial_condition: W::Clear as i32,
        version: 0,
        updated_at: None,
    }
}

async fn define(wm: &WeatherManager, r: Region) -> Result<Region, Status> {
    Ok(wm
        .define_region(Request::new(DefineRegionRequest {
            region: Some(r),
            expected_version: None,
        }))
        .await?
        .region
        .unwrap())
}

async fn current(wm: &WeatherManager, id: &str) -> Weather {
    wm.current(Request::new(CurrentRequest {
        region_id: id.into(),
    }))
    .await
    .unwrap()
    .weather
    .unwrap()
}

fn changes(wm: &WeatherManager) -> Vec<WeatherChangedEvent> {
    wm.ctx
        .store
        .scan(OUTBOX, b"", b"", 100_000)
        .unwrap()
        .into_iter()
        .map(|(_, v)| aicore_runtime::store::decode::<OutboxEvent>(OUTBOX, v).unwrap())
        .filter(|e| e.subject == CHANGED_SUBJECT)
        .map(|e| WeatherChangedEvent::decode(e.payload.as_slice()).unwrap())
        .collect()
}

fn sequence(r: &Region, steps: usize) -> Vec<i32> {
    Chain::new(r, 30).walk(0, steps, None)
}

#[test]
fn same_seed_same_weather_different_seed_different_weather() {
    let a = sequence(&region("r", 42), 500);
    assert_eq!(a, sequence(&region("r", 42), 500));
    assert_ne!(a, sequence(&region("r", 43), 500));
    assert_eq!(a[0], W::Clear as i32, "step 0 is the initial condition");
    // Random access agrees with the walk, with or without a cursor.
    let chain = Chain::new(&region("r", 42), 30);
    assert_eq!(chain.condition_at(377, None), a[377]);
    assert_eq!(chain.condition_at(377, Some((300, a[300]))), a[377]);
    // The chain does move.
    assert!(a.iter().any(|&c| c != a[0]));
}

#[tokio::test]
async fn forecast_matches_what_current_later_shows() {
    let (wm, clock) = domain();
    clock.set(10 * 3600 + 120);
    define(&wm, region("vale", 7)).await.unwrap();
    let f = wm
        .forecast(Request::new(ForecastRequest {
            region_id: "vale".into(),
            steps: 48,
        }))
        .await
        .unwrap()
        .steps;
    assert_eq!(f.len(), 48);
    assert_eq!(f[0].from_game_seconds, 10 * 3600);
    for (i, expected) in f.iter().enumerate() {
        clock.set(expected.from_game_seconds + 1800);
        wm.step(expected.from_game_seconds + 1800).await.unwrap();
        let now = current(&wm, "vale").await;
        assert_eq!(now.condition, expected.condition, "step {i}");
        assert_eq!(now.temperature_c, expected.temperature_c);
        assert_eq!(now.from_game_seconds, expected.from_game_seconds);
    }
    // Every change the steps walked through was published, in order, chaining old → new.
    let ch = changes(&wm);
    assert!(!ch.is_empty());
    for pair in ch.windows(2) {
        assert_eq!(pair[0].new_condition, pair[1].old_condition);
        assert!(pair[0].game_seconds < pair[1].game_seconds);
    }
    let distinct_runs = f
        .windows(2)
        .filter(|p| p[0].condition != p[1].condition)
        .count();
    assert_eq!(ch.len(), distinct_runs);
}

#[tokio::test]
async fn overrides_win_until_they_expire_or_are_cleared() {
    let (wm, clock) = domain();
    define(&wm, region("vale", 7)).await.unwrap();
    clock.set(5 * 3600);
    wm.step(5 * 3600).await.unwrap();
    let storm = wm
        .set_override(Request::new(SetOverrideRequest {
            region_id: "vale".into(),
            condition: W::Storm as i32,
            temperature_c: Some(-3.0),
            intensity: 0.0,
            duration_game_seconds: 7200,
            reason: "dragon".into(),
        }))
        .await
        .unwrap()
        .weather
        .unwrap();
    assert!(storm.overridden);
    assert_eq!(storm.condition, W::Storm as i32);
    assert_eq!((storm.temperature_c, storm.intensity), (-3.0, 0.5));
    let ev = changes(&wm);
    assert_eq!(ev.last().unwrap().new_condition, W::Storm as i32);

    // The forecast shows the override over its span, then the chain.
    let f = wm
        .forecast(Request::new(ForecastRequest {
            region_id: "vale".into(),
            steps: 4,
        }))
        .await
        .unwrap()
        .steps;
    assert!(f[0].overridden && f[1].overridden);
    assert!(!f[2].overridden && !f[3].overridden);

    // Expiry: two game hours later the chain's weather is back, and the task publishes it.
    clock.set(7 * 3600);
    wm.step(7 * 3600).await.unwrap();
    let after = current(&wm, "vale").await;
    assert!(!after.overridden);
    assert_eq!(after.condition, f[2].condition);
    if after.condition != W::Storm as i32 {
        assert_eq!(changes(&wm).last().unwrap().old_condition, W::Storm as i32);
    }

    // An open-ended override lasts until cleared; clearing twice reports false.
    wm.set_override(Request::new(SetOverrideRequest {
        region_id: "vale".into(),
        condition: W::Fog as i32,
        duration_game_seconds: 0,
        ..Default::default()
    }))
    .await
    .unwrap();
    clock.set(900 * 3600);
    assert_eq!(current(&wm, "vale").await.condition, W::Fog as i32);
    let clear = |wm: Arc<WeatherManager>| async move {
        wm.clear_override(Request::new(ClearOverrideRequest {
            region_id: "vale".into(),
        }))
        .await
        .unwrap()
    };
    let c = clear(wm.clone()).await;
    assert!(c.cleared);
    assert!(!c.weather.unwrap().overridden);
    assert!(!clear(wm.clone()).await.cleared);
}

#[tokio::test]
async fn a_long_gap_replays_a_bounded_number_of_steps() {
    let (wm, clock) = domain();
    define(&wm, region("vale", 11)).await.unwrap();
    wm.step(0).await.unwrap();
    let before = changes(&wm).len();
    clock.set(10_000 * 3600);
    wm.step(10_000 * 3600).await.unwrap();
    let published = changes(&wm).len() - before;
    assert!(published <= 24, "{published} events for one catch-up");
    assert_eq!(
        changes(&wm).last().map(|e| e.new_condition),
        Some(current(&wm, "vale").await.condition)
    );
}

#[tokio::test]
async fn region_definitions_are_validated_naming_the_field() {
    let (wm, _) = domain();
    type Edit = Box<dyn Fn(&mut Region)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|r| r.region_id = "Bad Id".into()),
            "region.region_id",
        ),
        (
            Box::new(|r| r.initial_condition = 0),
            "region.initial_condition",
        ),
        (
            Box::new(|r| r.initial_condition = W::Snow as i32),
            "region.climates[0].transitions",
        ),
        (Box::new(|r| r.climates.truncate(3)), "region.climates"),
        (
            Box::new(|r| r.climates[1].season = Season::Spring as i32),
            "region.climates[1].season",
        ),
        (
            Box::new(|r| r.climates[2].transitions[0].weight = 0.0),
            "region.climates[2].transitions[0].weight",
        ),
        (
            Box::new(|r| r.climates[2].transitions[1].weight = f64::NAN),
            "region.climates[2].transitions[1].weight",
        ),
        (
            Box::new(|r| {
                let dup = r.climates[0].transitions[0];
                r.climates[0].transitions.push(dup);
            }),
            "region.climates[0].transitions[9]",
        ),
        (
            Box::new(|r| r.climates[3].transitions[0].to_condition = 0),
            "region.climates[3].transitions[0].to_condition",
        ),
        (
            Box::new(|r| r.climates[0].temperature_spread_c = -1.0),
            "region.climates[0].temperature_spread_c",
        ),
        (Box::new(|r| r.step_seconds = 10), "region.step_seconds"),
    ];
    for (edit, field) in cases {
        let mut r = region("vale", 1);
        edit(&mut r);
        let e = define(&wm, r).await.unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(e.field_violations[0].field, field, "{e}");
    }
    let listed = wm
        .list_regions(Request::new(ListRegionsRequest::default()))
        .await
        .unwrap();
    assert!(listed.regions.is_empty(), "a refused definition was stored");
    let e = wm
        .current(Request::new(CurrentRequest {
            region_id: "vale".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
}

#[tokio::test]
async fn define_respects_expected_version_and_lists_in_order() {
    let (wm, _) = domain();
    for id in ["b", "a", "c"] {
        let r = define(&wm, region(id, 1)).await.unwrap();
        assert_eq!(r.version, 1);
    }
    let again = wm
        .define_region(Request::new(DefineRegionRequest {
            region: Some(region("a", 2)),
            expected_version: Some(0),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code, Code::Conflict);
    let v2 = wm
        .define_region(Request::new(DefineRegionRequest {
            region: Some(region("a", 2)),
            expected_version: Some(1),
        }))
        .await
        .unwrap()
        .region
        .unwrap();
    assert_eq!((v2.version, v2.seed), (2, 2));
    let page = wm
        .list_regions(Request::new(ListRegionsRequest {
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap();
    let ids: Vec<&str> = page.regions.iter().map(|r| r.region_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let rest = wm
        .list_regions(Request::new(ListRegionsRequest {
            page_size: 2,
            page_token: page.next_page_token,
        }))
        .await
        .unwrap();
    assert_eq!(rest.regions[0].region_id, "c");
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test]
async fn override_refusals_name_the_field() {
    let (wm, _) = domain();
    define(&wm, region("vale", 1)).await.unwrap();
    let base = SetOverrideRequest {
        region_id: "vale".into(),
        condition: W::Rain as i32,
        ..Default::default()
    };
    let cases = [
        (
            SetOverrideRequest {
                condition: 0,
                ..base.clone()
            },
            "condition",
        ),
        (
            SetOverrideRequest {
                intensity: 1.5,
                ..base.clone()
            },
            "intensity",
        ),
        (
            SetOverrideRequest {
                temperature_c: Some(f64::INFINITY),
                ..base.clone()
            },
            "temperature_c",
        ),
        (
            SetOverrideRequest {
                duration_game_seconds: -1,
                ..base.clone()
            },
            "duration_game_seconds",
        ),
        (
            SetOverrideRequest {
                region_id: "nowhere".into(),
                ..base.clone()
            },
            "region_id",
        ),
    ];
    for (req, field) in cases {
        let e = wm.set_override(Request::new(req)).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, field, "{e}");
    }
    assert!(!current(&wm, "vale").await.overridden);
}

/// A valid random climate table over a random subset of conditions.
fn arb_region() -> impl Strategy<Value = Region> {
    (
        proptest::sample::subsequence(ALL.to_vec(), 1..=7),
        any::<u64>(),
        proptest::collection::vec(0.01f64..10.0, 4 * 49),
        0usize..7,
    )
        .prop_map(|(states, seed, weights, init)| {
            let mut w = weights.into_iter();
            let climates = [
                Season::Spring,
                Season::Summer,
                Season::Autumn,
                Season::Winter,
            ]
            .into_iter()
            .map(|season| Climate {
                season: season as i32,
                transitions: states
                    .iter()
                    .flat_map(|&a| states.iter().map(move |&b| (a, b)))
                    .map(|(a, b)| tr(a, b, w.next().unwrap_or(1.0)))
                    .collect(),
                mean_temperature_c: 0.0,
                temperature_spread_c: 10.0,
            })
            .collect();
            Region {
                region_id: "p".into(),
                climates,
                seed,
                // Short steps so a few hundred cross season boundaries (30-day seasons).
                step_seconds: 86_400,
                initial_condition: states[init % states.len()] as i32,
                ..Default::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_chain_stays_in_its_table_and_is_reproducible(r in arb_region()) {
        prop_assert!(validate_region(&r).is_ok());
        let states: BTreeSet<i32> = r.climates[0].transitions.iter().map(|t| t.from_condition).collect();
        let a = Chain::new(&r, 30).walk(0, 400, None);
        prop_assert_eq!(&a, &Chain::new(&r, 30).walk(0, 400, None));
        for c in &a {
            prop_assert!(states.contains(c), "{} not in the table", c);
        }
        let chain = Chain::new(&r, 30);
        prop_assert_eq!(chain.walk(150, 50, Some((100, a[100]))), a[150..200].to_vec());
        let w = chain.weather("p", 123, a[123]);
        prop_assert!((-10.0..=10.0).contains(&w.temperature_c));
        prop_assert!((0.2..=1.0).contains(&w.intensity));
    }
}

/// A clock whose next reading, once armed, waits until released.
#[derive(Default)]
struct GatedClock {
    seconds: AtomicI64,
    armed: std::sync::atomic::AtomicBool,
    release: tokio::sync::Notify,
}

impl GameClock for GatedClock {
    fn now(&self) -> BoxFuture<'_, Result<i64, Status>> {
        let v = self.seconds.load(Ordering::SeqCst);
        Box::pin(async move {
            if self.armed.swap(false, Ordering::SeqCst) {
                self.release.notified().await;
            }
            Ok(v)
        })
    }

    fn days_per_season(&self) -> Option<u32> {
        Some(aicore_runtime::calendar::DEFAULT_DAYS_PER_SEASON)
    }
}

/// The background task reads the clock (10:00:10), then an override is set at a later
/// reading (10:00:50) in the same step; whatever the interleaving, the observation made
/// with the older reading must not commit after the override's and publish the override
/// as ending (STORM → chain) and beginning again.
#[tokio::test]
async fn a_step_with_an_older_clock_reading_never_lands_after_an_override() {
    let (ctx, _) = Ctx::for_tests();
    let stop = ctx.shutdown.clone();
    let clock = Arc::new(GatedClock::default());
    let wm = Arc::new(WeatherManager::new(ctx, Default::default(), clock.clone()));
    clock.seconds.store(10 * 3600, Ordering::SeqCst);
    define(&wm, region("vale", 5)).await.unwrap();
    wm.step(10 * 3600).await.unwrap();
    let before = changes(&wm).len();

    // The task reads 10:00:10 and is held there.
    clock.seconds.store(10 * 3600 + 10, Ordering::SeqCst);
    clock.armed.store(true, Ordering::SeqCst);
    let task = tokio::spawn(wm.clone().run());
    while clock.armed.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    // The override reads 10:00:50.
    clock.seconds.store(10 * 3600 + 50, Ordering::SeqCst);
    let setter = {
        let wm = wm.clone();
        tokio::spawn(async move {
            wm.set_override(Request::new(SetOverrideRequest {
                region_id: "vale".into(),
                condition: W::Storm as i32,
                temperature_c: None,
                intensity: 0.9,
                duration_game_seconds: 0,
                reason: "test".into(),
            }))
            .await
        })
    };
    // Give the override every chance to commit first, then let the task go on.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    clock.release.notify_one();
    setter.await.unwrap().unwrap();
    // Let the task observe again at 10:00:50 (no change), then stop it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    task.await.unwrap();

    let events: Vec<(i32, i32)> = changes(&wm)[before..]
        .iter()
        .map(|e| (e.old_condition, e.new_condition))
        .collect();
    let chain = current_condition_without_override(&wm).await;
    assert_eq!(events, vec![(chain, W::Storm as i32)], "{events:?}");
    assert_eq!(current(&wm, "vale").await.condition, W::Storm as i32);
}

/// The chain's condition now, from the stored observation.
async fn current_condition_without_override(wm: &WeatherManager) -> i32 {
    wm.ctx
        .store
        .get_msg::<Observed>(OBSERVED, b"vale")
        .unwrap()
        .unwrap()
        .chain_condition
}
