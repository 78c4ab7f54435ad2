//! environmental-narrative on an in-memory store with a scripted world (facts, game hour
//! and day, weather per region): conditions on time wrapping past midnight, weather,
//! facts and earlier discoveries; discovery recorded and published exactly once under
//! concurrent calls; refusals that name the field and write nothing; listing and who may
//! act for whom. The NATS wiring is covered by the e2e suite `narrative`.

use std::collections::HashMap;
use std::sync::Mutex;

use aicore_proto::aicore::common::v1::{Value, value};
use aicore_proto::aicore::environmental_narrative::v1::*;
use aicore_proto::aicore::world_state::v1::Fact;
use aicore_proto::{Code, Request};
use aicore_runtime::outbox::{OUTBOX, OutboxEvent};
use futures::future::BoxFuture;

use super::*;

#[derive(Default)]
struct Scripted {
    now: Mutex<(i64, i32)>,
    weather: Mutex<HashMap<String, WeatherCondition>>,
    facts: Mutex<HashMap<String, String>>,
    reads: Mutex<usize>,
}

impl Scripted {
    fn at(&self, day: i64, hour: i32) {
        *self.now.lock().unwrap() = (day, hour);
    }
    fn weather(&self, region: &str, w: WeatherCondition) {
        self.weather.lock().unwrap().insert(region.into(), w);
    }
}

impl World for Scripted {
    fn fact(&self, key: String, _: CallOptions) -> BoxFuture<'_, Result<Option<Fact>, Status>> {
        *self.reads.lock().unwrap() += 1;
        let f = self.facts.lock().unwrap().get(&key).map(|v| Fact {
            key: key.clone(),
            data: v.clone().into_bytes().into(),
            content_type: "text/plain".into(),
            ..Default::default()
        });
        Box::pin(async move { Ok(f) })
    }
    fn now(&self, _: CallOptions) -> BoxFuture<'_, Result<GameNow, Status>> {
        let (day, hour) = *self.now.lock().unwrap();
        Box::pin(async move { Ok(GameNow { day, hour }) })
    }
    fn weather(&self, region: String, _: CallOptions) -> BoxFuture<'_, Result<i32, Status>> {
        let w = self.weather.lock().unwrap().get(&region).copied();
        Box::pin(async move {
            w.map(|w| w as i32)
                .ok_or_else(|| Status::not_found(format!("no region `{region}`")))
        })
    }
}

fn domain() -> (EnvironmentalNarrative, Arc<Scripted>) {
    let (ctx, _) = Ctx::for_tests();
    let world = Arc::new(Scripted::default());
    (
        EnvironmentalNarrative::new(ctx, Default::default(), world.clone()),
        world,
    )
}

fn fragment(id: &str, location: &str, conditions: Option<Conditions>) -> Fragment {
    Fragment {
        fragment_id: id.into(),
        location_id: location.into(),
        region_id: "marsh".into(),
        title: format!("The {id}"),
        text: format!("Text of {id}"),
        conditions,
        ..Default::default()
    }
}

async fn define(d: &EnvironmentalNarrative, f: Fragment) -> Result<Fragment, Status> {
    Ok(d.define_fragment(Request::new(DefineFragmentRequest {
        fragment: Some(f),
        expected_version: None,
    }))
    .await?
    .fragment
    .unwrap())
}

async fn discover(d: &EnvironmentalNarrative, player: &str, location: &str) -> Vec<(String, bool)> {
    d.discover(Request::new(DiscoverRequest {
        player_id: player.into(),
        location_id: location.into(),
    }))
    .await
    .unwrap()
    .discoveries
    .into_iter()
    .map(|x| (x.fragment.unwrap().fragment_id, x.first_time))
    .collect()
}

fn ids(found: &[(String, bool)]) -> Vec<&str> {
    found.iter().map(|(id, _)| id.as_str()).collect()
}

fn events(d: &EnvironmentalNarrative) -> Vec<FragmentDiscovered> {
    d.ctx
        .store
        .scan(OUTBOX, b"", b"", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, v)| aicore_runtime::store::decode::<OutboxEvent>(OUTBOX, v).unwrap())
        .filter(|e| e.subject == DISCOVERED_SUBJECT)
        .map(|e| prost::Message::decode(e.payload.as_ref()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_fragment_appears_only_when_its_hours_and_weather_hold() {
    let (d, world) = domain();
    let night_rain = Conditions {
        from_hour: 22,
        to_hour: 4,
        weather: vec![
            WeatherCondition::Rain as i32,
            WeatherCondition::Storm as i32,
        ],
        ..Default::default()
    };
    define(&d, fragment("ghost", "mill", Some(night_rain)))
        .await
        .unwrap();
    define(&d, fragment("sign", "mill", None)).await.unwrap();
    let cases = [
        (23, WeatherCondition::Rain, true),
        (2, WeatherCondition::Storm, true),
        (4, WeatherCondition::Rain, false),
        (12, WeatherCondition::Rain, false),
        (23, WeatherCondition::Clear, false),
        (0, WeatherCondition::Fog, false),
    ];
    for (i, (hour, weather, seen)) in cases.into_iter().enumerate() {
        world.at(3, hour);
        world.weather("marsh", weather);
        let found = discover(&d, &format!("p{i}"), "mill").await;
        assert_eq!(
            ids(&found).contains(&"ghost"),
            seen,
            "hour {hour}, {weather:?}"
        );
        assert!(
            ids(&found).contains(&"sign"),
            "an unconditional fragment is always there"
        );
    }
    assert!(hour_in(5, 5, 5) && hour_in(0, 22, 4) && !hour_in(22, 4, 22));
}

#[tokio::test]
async fn facts_days_and_earlier_discoveries_gate_fragments() {
    let (d, world) = domain();
    let gated = Conditions {
        facts: vec![
            aicore_proto::aicore::environmental_narrative::v1::FactCondition {
                key: "mill.burned".into(),
                op: FactOperator::Equals as i32,
                value: Some(Value {
                    kind: Some(value::Kind::StringValue("yes".into())),
                }),
            },
        ],
        min_game_day: 10,
        ..Default::default()
    };
    define(&d, fragment("ashes", "mill", Some(gated)))
        .await
        .unwrap();
    let chained = Conditions {
        requires_fragment_ids: vec!["ashes".into()],
        ..Default::default()
    };
    define(&d, fragment("letter", "mill", Some(chained)))
        .await
        .unwrap();
    world.at(12, 9);
    assert!(
        discover(&d, "p", "mill").await.is_empty(),
        "the fact does not hold"
    );
    world
        .facts
        .lock()
        .unwrap()
        .insert("mill.burned".into(), "yes".into());
    world.at(9, 9);
    assert!(
        discover(&d, "p", "mill").await.is_empty(),
        "too early a day"
    );
    world.at(10, 9);
    // The letter needs the ashes found before this call: it appears on the next.
    assert_eq!(
        discover(&d, "p", "mill").await,
        [("ashes".to_string(), true)]
    );
    assert_eq!(
        discover(&d, "p", "mill").await,
        [("ashes".to_string(), false), ("letter".to_string(), true)]
    );
    assert_eq!(events(&d).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_discovers_record_and_publish_each_fragment_once() {
    let (d, world) = domain();
    let d = Arc::new(d);
    world.at(1, 1);
    for id in ["a", "b", "c"] {
        define(&d, fragment(id, "cave", None)).await.unwrap();
    }
    let calls = (0..16).map(|_| {
        let d = d.clone();
        tokio::spawn(async move { discover(&d, "racer", "cave").await })
    });
    let results = futures::future::join_all(calls).await;
    let mut firsts: HashMap<String, usize> = HashMap::new();
    for r in results {
        let found = r.unwrap();
        assert_eq!(ids(&found), ["a", "b", "c"]);
        for (id, first) in found {
            *firsts.entry(id).or_default() += usize::from(first);
        }
    }
    assert_eq!(
        firsts,
        [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("c".to_string(), 1)
        ]
        .into()
    );
    let mut published: Vec<String> = events(&d).into_iter().map(|e| e.fragment_id).collect();
    published.sort();
    assert_eq!(published, ["a", "b", "c"]);
    // Another player finds them for themselves.
    assert!(
        discover(&d, "other", "cave")
            .await
            .iter()
            .all(|(_, first)| *first)
    );
}

#[tokio::test]
async fn refusals_name_the_field_and_write_nothing() {
    let (d, world) = domain();
    world.at(1, 1);
    let cases: Vec<(Fragment, &str)> = vec![
        (fragment("Bad Id", "mill", None), "fragment.fragment_id"),
        (fragment("x", "", None), "fragment.location_id"),
        (
            Fragment {
                text: String::new(),
                ..fragment("x", "mill", None)
            },
            "fragment.text",
        ),
        (
            fragment(
                "x",
                "mill",
                Some(Conditions {
                    from_hour: 24,
                    ..Default::default()
                }),
            ),
            "fragment.conditions.from_hour",
        ),
        (
            fragment(
                "x",
                "mill",
                Some(Conditions {
                    weather: vec![0],
                    ..Default::default()
                }),
            ),
            "fragment.conditions.weather[0]",
        ),
        (
            Fragment {
                region_id: String::new(),
                ..fragment(
                    "x",
                    "mill",
                    Some(Conditions {
                        weather: vec![1],
                        ..Default::default()
                    }),
                )
            },
            "fragment.region_id",
        ),
        (
            fragment(
                "x",
                "mill",
                Some(Conditions {
                    facts: vec![
                        aicore_proto::aicore::environmental_narrative::v1::FactCondition {
                            key: "k".into(),
                            op: FactOperator::GreaterThan as i32,
                            value: None,
                        },
                    ],
                    ..Default::default()
                }),
            ),
            "fragment.conditions.facts[0].value",
        ),
        (
            fragment(
                "x",
                "mill",
                Some(Conditions {
                    requires_fragment_ids: vec!["x".into()],
                    ..Default::default()
                }),
            ),
            "fragment.conditions.requires_fragment_ids[0]",
        ),
    ];
    for (f, field) in cases {
        let e = define(&d, f).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
    assert!(
        discover(&d, "p", "mill").await.is_empty(),
        "nothing was defined"
    );
    let e = d
        .discover(Request::new(DiscoverRequest {
            player_id: String::new(),
            location_id: "mill".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "player_id");

    // Versions: create-only, then a stale replace, are Conflict and change nothing.
    let v1 = define(&d, fragment("x", "mill", None)).await.unwrap();
    assert_eq!(v1.version, 1);
    for expected in [0, 7] {
        let e = d
            .define_fragment(Request::new(DefineFragmentRequest {
                fragment: Some(Fragment {
                    text: "changed".into(),
                    ..fragment("x", "barn", None)
                }),
                expected_version: Some(expected),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Conflict);
    }
    assert_eq!(ids(&discover(&d, "p", "mill").await), ["x"]);
    assert!(discover(&d, "p2", "barn").await.is_empty());
    // Moving it moves it.
    define(&d, fragment("x", "barn", None)).await.unwrap();
    assert!(discover(&d, "p3", "mill").await.is_empty());
    assert_eq!(ids(&discover(&d, "p3", "barn").await), ["x"]);
}

#[tokio::test]
async fn list_discovered_is_most_recent_first_filtered_and_only_ones_own() {
    let (ctx, clock) = Ctx::for_tests();
    let world = Arc::new(Scripted::default());
    let d = EnvironmentalNarrative::new(ctx, Default::default(), world);
    for (id, at) in [("a", "mill"), ("b", "cave"), ("c", "mill")] {
        define(&d, fragment(id, at, None)).await.unwrap();
    }
    discover(&d, "p", "mill").await;
    clock.advance(std::time::Duration::from_secs(5));
    discover(&d, "p", "cave").await;
    let list = |location: &str, page_size: i32, token: &str| ListDiscoveredRequest {
        player_id: "p".into(),
        location_id: location.into(),
        page_size,
        page_token: token.into(),
    };
    let r = d
        .list_discovered(Request::new(list("", 2, "")))
        .await
        .unwrap();
    let got: Vec<String> = r
        .discoveries
        .iter()
        .map(|x| x.fragment.clone().unwrap().fragment_id)
        .collect();
    assert_eq!(got[0], "b", "most recent first");
    assert!(!r.next_page_token.is_empty());
    let r2 = d
        .list_discovered(Request::new(list("", 2, &r.next_page_token)))
        .await
        .unwrap();
    assert_eq!(r2.discoveries.len(), 1);
    let r = d
        .list_discovered(Request::new(list("mill", 10, "")))
        .await
        .unwrap();
    let mut got: Vec<String> = r
        .discoveries
        .iter()
        .map(|x| x.fragment.clone().unwrap().fragment_id)
        .collect();
    got.sort();
    assert_eq!(got, ["a", "c"]);

    // A player acts only for themselves.
    let e = d
        .list_discovered(Request::new(list("", 10, "")).on_behalf_of("q", &["player"]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    let e = d
        .discover(
            Request::new(DiscoverRequest {
                player_id: "p".into(),
                location_id: "mill".into(),
            })
            .on_behalf_of("q", &["player"]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    assert!(
        d.list_discovered(Request::new(list("", 10, "")).on_behalf_of("p", &["player"]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_deleted_fragment_is_found_by_nobody_and_its_discoveries_are_kept() {
    let (d, _) = domain();
    define(&d, fragment("a", "mill", None)).await.unwrap();
    define(&d, fragment("b", "mill", None)).await.unwrap();
    let chained = Conditions {
        requires_fragment_ids: vec!["a".into()],
        ..Default::default()
    };
    define(&d, fragment("c", "cave", Some(chained)))
        .await
        .unwrap();
    assert_eq!(ids(&discover(&d, "p", "mill").await), ["a", "b"]);
    let del = |id: &str, expected: Option<u64>, key: &str| DeleteFragmentRequest {
        fragment_id: id.into(),
        expected_version: expected,
        idempotency_key: key.into(),
    };
    // Refusals name the field and delete nothing.
    let e = d
        .delete_fragment(Request::new(del("A!", None, "")))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "fragment_id");
    let e = d
        .delete_fragment(Request::new(del("a", Some(2), "")))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    assert_eq!(ids(&discover(&d, "q", "mill").await), ["a", "b"]);

    let r = d
        .delete_fragment(Request::new(del("a", Some(1), "k1")))
        .await
        .unwrap();
    assert_eq!(r.deleted_version, 1);
    // A retry with its key replays; without one the fragment is gone.
    let again = d
        .delete_fragment(Request::new(del("a", Some(1), "k1")))
        .await
        .unwrap();
    assert_eq!(again, r);
    let e = d
        .delete_fragment(Request::new(del("a", None, "")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::NotFound, "fragment_id")
    );

    // Nobody finds it any more; the player who found it still has the discovery for the
    // chain, and a list no longer shows it.
    assert_eq!(ids(&discover(&d, "r", "mill").await), ["b"]);
    assert_eq!(ids(&discover(&d, "p", "cave").await), ["c"]);
    let listed = d
        .list_discovered(Request::new(ListDiscoveredRequest {
            player_id: "p".into(),
            location_id: "mill".into(),
            page_size: 10,
            page_token: String::new(),
        }))
        .await
        .unwrap();
    let got: Vec<String> = listed
        .discoveries
        .iter()
        .map(|x| x.fragment.clone().unwrap().fragment_id)
        .collect();
    assert_eq!(got, ["b"]);
    // The location's slot is free again: defining it anew works and it is listed as found.
    define(&d, fragment("a", "mill", None)).await.unwrap();
    assert_eq!(
        discover(&d, "p", "mill").await,
        [("a".to_string(), false), ("b".to_string(), false)]
    );
}
