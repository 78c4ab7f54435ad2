//! body-broker-integration's unit tests, over stand-in peers: some answer, one is not
//! served (Unavailable), one never answers.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

/// How a stand-in peer behaves for one section.
#[derive(Clone)]
enum Behaviour {
    Answers,
    Fails(Code),
    Hangs,
}

#[derive(Default)]
struct Stand {
    behaviour: HashMap<i32, Behaviour>,
    /// Every fetch: its section, the caller it carried, the player asked for.
    seen: Mutex<Vec<(Section, Option<String>, String)>>,
}

fn part(section: Section, q: &Query) -> Part {
    match section {
        Section::Profile => Part::Profile(PlayerProfile {
            account_id: q.player_id.clone(),
            username: "ann".into(),
            ..Default::default()
        }),
        Section::Settings => Part::Settings(vec![SettingEntry {
            key: "audio.volume".into(),
            ..Default::default()
        }]),
        Section::Wallet => Part::Wallet(vec![Balance {
            currency: "gold".into(),
            amount: 40,
        }]),
        Section::Quests => Part::Quests(vec![ActiveQuest {
            quest_id: "q1".into(),
            title: "The Key".into(),
            ..Default::default()
        }]),
        Section::World => Part::World(
            7,
            vec![WorldFact {
                key: "gate".into(),
                ..Default::default()
            }],
        ),
        Section::GameTime => Part::GameTime(GameClock {
            game_seconds: 3600,
            scale: 60.0,
            paused: false,
        }),
        Section::Weather => Part::Weather(RegionWeather {
            region_id: q.weather_region.clone(),
            condition: "WEATHER_CONDITION_RAIN".into(),
            ..Default::default()
        }),
        Section::Performance | Section::Unspecified => Part::Performance(PerformanceProfile {
            name: "balanced".into(),
            ..Default::default()
        }),
    }
}

impl Peers for Stand {
    fn fetch(
        &self,
        section: Section,
        query: Arc<Query>,
        options: CallOptions,
    ) -> BoxFuture<'static, Result<Part, Status>> {
        self.seen.lock().unwrap().push((
            section,
            options.caller.as_ref().map(|c| c.account_id.clone()),
            query.player_id.clone(),
        ));
        let b = self
            .behaviour
            .get(&(section as i32))
            .cloned()
            .unwrap_or(Behaviour::Answers);
        Box::pin(async move {
            match b {
                Behaviour::Answers => Ok(part(section, &query)),
                Behaviour::Fails(code) => Err(Status::new(code, format!("{section:?} is down"))),
                Behaviour::Hangs => futures::future::pending().await,
            }
        })
    }
}

fn broker(behaviour: &[(Section, Behaviour)]) -> (BodyBrokerIntegration, Arc<Stand>) {
    let stand = Arc::new(Stand {
        behaviour: behaviour
            .iter()
            .map(|(s, b)| (*s as i32, b.clone()))
            .collect(),
        ..Default::default()
    });
    let config = BodyBrokerIntegrationConfig {
        section_deadline_ms: 100,
        ..Default::default()
    };
    let b = BodyBrokerIntegration::new(Ctx::for_tests().0, config, stand.clone()).unwrap();
    (b, stand)
}

fn as_player(player: &str, body: BootstrapRequest) -> Request<BootstrapRequest> {
    Request::new(body).on_behalf_of(player, &["player"])
}

fn everything() -> BootstrapRequest {
    BootstrapRequest {
        weather_region: "marsh".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_section_is_composed_for_the_caller_on_the_callers_identity() {
    let (b, stand) = broker(&[]);
    let r = b
        .bootstrap(as_player("acc_ann", everything()))
        .await
        .unwrap();
    assert!(r.unavailable.is_empty() && r.missing.is_empty(), "{r:?}");
    assert_eq!(r.profile.unwrap().account_id, "acc_ann");
    assert_eq!(r.settings.len(), 1);
    assert_eq!(r.wallet[0].amount, 40);
    assert_eq!(r.active_quests[0].title, "The Key");
    assert_eq!((r.world_revision, r.world.len()), (7, 1));
    assert_eq!(r.game_time.unwrap().game_seconds, 3600);
    assert_eq!(r.weather.unwrap().region_id, "marsh");
    assert_eq!(r.performance.unwrap().name, "balanced");
    assert!(r.server_time.is_some());
    let seen = stand.seen.lock().unwrap();
    assert_eq!(seen.len(), 8, "each domain asked once");
    assert!(
        seen.iter()
            .all(|(_, caller, player)| caller.as_deref() == Some("acc_ann") && player == "acc_ann"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_domain_down_or_silent_leaves_its_section_missing_with_why_and_the_rest_present() {
    let (b, _) = broker(&[
        (Section::Wallet, Behaviour::Fails(Code::Unavailable)),
        (Section::World, Behaviour::Hangs),
        (Section::Quests, Behaviour::Fails(Code::Internal)),
    ]);
    let r = b
        .bootstrap(as_player("acc_ann", everything()))
        .await
        .unwrap();
    let missing: Vec<(i32, i32)> = r.missing.iter().map(|m| (m.section, m.code)).collect();
    assert_eq!(
        missing,
        [
            (Section::Wallet as i32, Code::Unavailable as i32),
            (Section::Quests as i32, Code::Internal as i32),
            (Section::World as i32, Code::DeadlineExceeded as i32),
        ]
    );
    assert!(
        r.missing[0].message.contains("Wallet is down"),
        "{:?}",
        r.missing
    );
    assert_eq!(
        r.unavailable,
        [
            Section::Wallet as i32,
            Section::Quests as i32,
            Section::World as i32
        ]
    );
    assert!(r.wallet.is_empty() && r.world.is_empty() && r.active_quests.is_empty());
    // The rest is all there.
    assert!(r.profile.is_some() && r.game_time.is_some() && r.weather.is_some());
    assert!(r.performance.is_some() && !r.settings.is_empty());
}

#[tokio::test]
async fn players_bootstrap_only_themselves_and_services_name_the_player() {
    let (b, stand) = broker(&[]);
    let other = BootstrapRequest {
        player_id: "acc_bob".into(),
        ..Default::default()
    };
    let e = b
        .bootstrap(as_player("acc_ann", other.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    assert!(stand.seen.lock().unwrap().is_empty(), "nothing asked");
    let svc = |body| Request::new(body).on_behalf_of("svc", &["service"]);
    let e = b
        .bootstrap(svc(BootstrapRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::InvalidArgument, "player_id")
    );
    let r = b.bootstrap(svc(other)).await.unwrap();
    assert_eq!(r.profile.unwrap().account_id, "acc_bob");
}

#[tokio::test]
async fn only_the_sections_asked_for_are_fetched_and_bad_requests_name_the_field() {
    let (b, stand) = broker(&[]);
    let r = b
        .bootstrap(as_player(
            "acc_ann",
            BootstrapRequest {
                sections: vec![
                    Section::Wallet as i32,
                    Section::Wallet as i32,
                    Section::GameTime as i32,
                ],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(r.profile.is_none() && r.settings.is_empty());
    assert_eq!((r.wallet.len(), r.game_time.is_some()), (1, true));
    let asked: Vec<Section> = stand.seen.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(asked, [Section::Wallet, Section::GameTime]);

    // Without a region the weather is left out, not missing.
    let r = b
        .bootstrap(as_player("acc_ann", BootstrapRequest::default()))
        .await
        .unwrap();
    assert!(r.weather.is_none() && r.missing.is_empty());

    let cases = [
        (
            BootstrapRequest {
                sections: vec![0],
                ..Default::default()
            },
            "sections[0]",
        ),
        (
            BootstrapRequest {
                sections: vec![2, 99],
                ..Default::default()
            },
            "sections[1]",
        ),
        (
            BootstrapRequest {
                sections: vec![Section::Weather as i32],
                ..Default::default()
            },
            "weather_region",
        ),
        (
            BootstrapRequest {
                world_prefix: "a\u{7}".into(),
                ..Default::default()
            },
            "world_prefix",
        ),
        (
            BootstrapRequest {
                settings_prefix: "x".repeat(300),
                ..Default::default()
            },
            "settings_prefix",
        ),
    ];
    for (req, field) in cases {
        let e = b.bootstrap(as_player("acc_ann", req)).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
}

#[test]
fn inconsistent_configurations_are_refused() {
    let peers: Arc<dyn Peers> = Arc::new(Stand::default());
    for config in [
        BodyBrokerIntegrationConfig {
            section_deadline_ms: 0,
            ..Default::default()
        },
        BodyBrokerIntegrationConfig {
            page_size: 0,
            ..Default::default()
        },
        BodyBrokerIntegrationConfig {
            max_pages: 0,
            ..Default::default()
        },
    ] {
        assert!(BodyBrokerIntegration::new(Ctx::for_tests().0, config, peers.clone()).is_err());
    }
}
