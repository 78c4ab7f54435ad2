//! performance-mode's unit tests, on an in-memory store and a manual clock.

use std::time::Duration;

use aicore_proto::Code;
use aicore_proto::aicore::performance_mode::v1::ModelTier;

use super::*;

fn domain() -> PerformanceMode {
    PerformanceMode::new(Ctx::for_tests().0, PerformanceModeConfig::default()).unwrap()
}

fn as_player<T>(player: &str, body: T) -> Request<T> {
    Request::new(body).on_behalf_of(player, &["player"])
}

fn ms_d(ms: u64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_millis(ms)).ok()
}

async fn get(d: &PerformanceMode, player: &str) -> PlayerMode {
    d.get(as_player(
        player,
        GetRequest {
            player_id: player.into(),
        },
    ))
    .await
    .unwrap()
    .mode
    .unwrap()
}

async fn set(
    d: &PerformanceMode,
    player: &str,
    profile: &str,
    automatic: bool,
) -> Result<PlayerMode, Status> {
    let r = d
        .set(as_player(
            player,
            SetRequest {
                player_id: player.into(),
                profile: profile.into(),
                automatic,
                expected_version: None,
            },
        ))
        .await?;
    Ok(r.mode.unwrap())
}

async fn set_default(d: &PerformanceMode, profile: &str) -> Result<SetDefaultResponse, Status> {
    d.set_default(Request::new(SetDefaultRequest {
        profile: profile.into(),
        expected_version: None,
    }))
    .await
}

fn report(player: &str, p95_ms: u64) -> ReportRequest {
    ReportRequest {
        player_id: player.into(),
        frame_time_p50: ms_d(p95_ms / 2),
        frame_time_p95: ms_d(p95_ms),
        network_latency_p50: ms_d(40),
        window: ms_d(10_000),
        battery_level: None,
        device_class: "steamdeck".into(),
    }
}

fn name(m: &PlayerMode) -> &str {
    &m.profile.as_ref().unwrap().name
}

#[tokio::test]
async fn a_player_follows_the_global_default_until_choosing_and_keeps_the_choice() {
    let d = domain();
    let m = get(&d, "ann").await;
    assert_eq!(name(&m), "balanced", "the configured default");
    assert_eq!(m.source, ProfileSource::Default as i32);
    assert_eq!(m.version, 0);

    let r = set_default(&d, "battery").await.unwrap();
    assert_eq!(r.default_profile, "battery");
    assert_eq!(
        name(&get(&d, "ann").await),
        "battery",
        "the global default now"
    );

    let m = set(&d, "ann", "quality", false).await.unwrap();
    assert_eq!(
        (name(&m), m.source, m.version),
        ("quality", ProfileSource::Player as i32, 1)
    );
    let full = m.profile.unwrap();
    assert_eq!(
        full.max_model_tier,
        ModelTier::Large as i32,
        "the whole profile is shown"
    );
    assert_eq!(
        full.target_frame_time,
        prost_types::Duration::try_from(Duration::from_secs(1) / 60).ok()
    );

    // Another player still follows the global default; Ann keeps her choice through it.
    set_default(&d, "quality").await.unwrap();
    assert_eq!(name(&get(&d, "bob").await), "quality");
    set_default(&d, "battery").await.unwrap();
    assert_eq!(name(&get(&d, "ann").await), "quality");
    assert_eq!(name(&get(&d, "bob").await), "battery");

    // Clearing the global default returns to the configured one.
    let r = set_default(&d, "").await.unwrap();
    assert_eq!(r.default_profile, "balanced");
    assert_eq!(r.global_default.unwrap().profile, "");
    assert_eq!(name(&get(&d, "bob").await), "balanced");
    let p = d
        .profiles(as_player("bob", ProfilesRequest::default()))
        .await
        .unwrap();
    assert_eq!(p.default_profile, "balanced");
    let names: Vec<_> = p.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["battery", "balanced", "quality"], "lightest first");
}

#[tokio::test]
async fn unknown_profiles_are_refused_naming_the_field_and_nothing_is_written() {
    let d = domain();
    let e = set(&d, "ann", "ultra", false).await.unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
    assert_eq!(e.field_violations[0].field, "profile");
    assert!(
        e.message.contains("ultra") && e.message.contains("balanced"),
        "{}",
        e.message
    );
    assert_eq!(get(&d, "ann").await.version, 0, "nothing written");

    let e = set_default(&d, "ultra").await.unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::InvalidArgument, "profile")
    );
    assert!(set_default(&d, "").await.unwrap().global_default.is_some());

    let e = set(&d, "ann", "", false).await.unwrap_err();
    assert_eq!(
        e.field_violations[0].field, "profile",
        "required without automatic"
    );
    let e = set(&d, "", "battery", false).await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "player_id");
}

#[tokio::test]
async fn players_act_only_for_themselves_and_services_for_anyone() {
    let d = domain();
    let e = d
        .set(as_player(
            "mallory",
            SetRequest {
                player_id: "ann".into(),
                profile: "battery".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    let e = d
        .get(as_player(
            "mallory",
            GetRequest {
                player_id: "ann".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    // A service acts for any player.
    let ok = d
        .set(
            Request::new(SetRequest {
                player_id: "ann".into(),
                profile: "battery".into(),
                ..Default::default()
            })
            .on_behalf_of("svc", &["service"]),
        )
        .await
        .unwrap();
    assert_eq!(name(ok.mode.as_ref().unwrap()), "battery");
}

#[tokio::test]
async fn set_is_idempotent_and_conditional_writes_see_the_version() {
    let (ctx, clock) = Ctx::for_tests();
    let d = PerformanceMode::new(ctx, PerformanceModeConfig::default()).unwrap();
    let first = set(&d, "ann", "battery", false).await.unwrap();
    clock.advance(Duration::from_secs(5));
    let again = set(&d, "ann", "battery", false).await.unwrap();
    assert_eq!(
        again, first,
        "the same request changes nothing, not even the version or time"
    );
    // A retry conditioned on the version it first saw still succeeds as a no-op...
    let retry = d
        .set(as_player(
            "ann",
            SetRequest {
                player_id: "ann".into(),
                profile: "battery".into(),
                automatic: false,
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap();
    assert_eq!(retry.mode.unwrap().version, 1);
    // ...a change bumps it, and a stale expectation is a Conflict naming the field.
    let m = set(&d, "ann", "battery", true).await.unwrap();
    assert_eq!((m.version, m.automatic), (2, true));
    let e = d
        .set(as_player(
            "ann",
            SetRequest {
                player_id: "ann".into(),
                profile: "quality".into(),
                automatic: false,
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::Conflict, "expected_version")
    );
    assert_eq!(name(&get(&d, "ann").await), "battery");

    // SetDefault too.
    let a = set_default(&d, "quality")
        .await
        .unwrap()
        .global_default
        .unwrap();
    let b = set_default(&d, "quality")
        .await
        .unwrap()
        .global_default
        .unwrap();
    assert_eq!((a.version, b.version), (1, 1));
}

#[tokio::test]
async fn report_recommends_by_the_rules_and_applies_only_in_automatic_mode() {
    let d = domain();
    // balanced targets 60 fps (16.7 ms); 25 ms p95 is > 1.15 × target: one lighter.
    let r = d.report(as_player("ann", report("ann", 25))).await.unwrap();
    assert_eq!(r.recommended_profile, "battery");
    assert!(!r.applied, "the player did not choose automatic mode");
    assert_eq!(name(r.mode.as_ref().unwrap()), "balanced");
    assert!(r.reasons[0].contains("above"), "{:?}", r.reasons);

    // Within target, no room for quality (60 fps × 0.7 = 11.7 ms): stays.
    let r = d.report(as_player("ann", report("ann", 15))).await.unwrap();
    assert_eq!(r.recommended_profile, "balanced");
    // Plenty of room: one richer, unless the network is slow.
    let r = d.report(as_player("ann", report("ann", 8))).await.unwrap();
    assert_eq!(r.recommended_profile, "quality");
    let mut slow = report("ann", 8);
    slow.network_latency_p50 = ms_d(400);
    let r = d.report(as_player("ann", slow)).await.unwrap();
    assert_eq!(r.recommended_profile, "balanced");
    assert!(
        r.reasons.iter().any(|x| x.contains("network")),
        "{:?}",
        r.reasons
    );
    // Low battery beats everything: the lightest.
    let mut low = report("ann", 8);
    low.battery_level = Some(0.1);
    let r = d.report(as_player("ann", low)).await.unwrap();
    assert_eq!(r.recommended_profile, "battery");

    // Automatic mode: applied, one step at a time, source Automatic.
    set(&d, "ann", "quality", true).await.unwrap();
    let r = d.report(as_player("ann", report("ann", 40))).await.unwrap();
    assert!(r.applied);
    assert_eq!(
        r.recommended_profile, "balanced",
        "one profile lighter, not two"
    );
    let m = r.mode.unwrap();
    assert_eq!(
        (name(&m), m.source),
        ("balanced", ProfileSource::Automatic as i32)
    );
    // The lightest stays the lightest.
    set(&d, "ann", "battery", true).await.unwrap();
    let r = d
        .report(as_player("ann", report("ann", 200)))
        .await
        .unwrap();
    assert_eq!(
        (r.recommended_profile.as_str(), r.applied),
        ("battery", false)
    );
}

#[tokio::test]
async fn a_steady_report_writes_nothing() {
    let d = domain();
    let a = d.report(as_player("ann", report("ann", 15))).await.unwrap();
    let b = d.report(as_player("ann", report("ann", 15))).await.unwrap();
    assert_eq!(a.mode.unwrap().version, 1);
    assert_eq!(b.mode.unwrap().version, 1);
}

/// A change that makes a Report request invalid.
type Breaks = Box<dyn Fn(&mut ReportRequest)>;

#[tokio::test]
async fn report_figures_are_checked_naming_the_field() {
    let d = domain();
    let cases: Vec<(&str, Breaks)> = vec![
        ("frame_time_p95", Box::new(|r| r.frame_time_p95 = None)),
        ("frame_time_p95", Box::new(|r| r.frame_time_p95 = ms_d(0))),
        (
            "frame_time_p95",
            Box::new(|r| r.frame_time_p95 = ms_d(61_000)),
        ),
        ("frame_time_p50", Box::new(|r| r.frame_time_p50 = ms_d(100))),
        (
            "network_latency_p50",
            Box::new(|r| {
                r.network_latency_p50 = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
        ),
        ("battery_level", Box::new(|r| r.battery_level = Some(1.5))),
        (
            "device_class",
            Box::new(|r| r.device_class = "x".repeat(65)),
        ),
    ];
    for (field, break_it) in cases {
        let mut req = report("ann", 20);
        break_it(&mut req);
        let e = d.report(as_player("ann", req)).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
    assert_eq!(get(&d, "ann").await.version, 0, "nothing written");
}

#[test]
fn inconsistent_configurations_are_refused() {
    let base = PerformanceModeConfig::default;
    let mut c = base();
    c.default_profile = "ultra".into();
    assert!(Profiles::from_config(&c).is_err_and(|e| e.message.contains("default_profile")));
    let mut c = base();
    c.profiles[1].name = "battery".into();
    assert!(Profiles::from_config(&c).is_err_and(|e| e.message.contains("twice")));
    let mut c = base();
    c.profiles[0].max_model_tier = "huge".into();
    assert!(Profiles::from_config(&c).is_err_and(|e| e.message.contains("max_model_tier")));
    let mut c = base();
    c.profiles[0].target_fps = 0;
    assert!(Profiles::from_config(&c).is_err_and(|e| e.message.contains("target_fps")));
    let mut c = base();
    c.step_up_below = 1.5;
    assert!(Profiles::from_config(&c).is_err());
    assert!(Profiles::from_config(&base()).is_ok());
}
