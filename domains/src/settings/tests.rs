//! settings' unit tests, on an in-memory store.

use super::*;

fn domain() -> Settings {
    Settings::new(Ctx::for_tests().0, SettingsConfig::default())
}

fn trusted<T>(body: T) -> Request<T> {
    Request::new(body)
}

fn as_player<T>(player: &str, body: T) -> Request<T> {
    Request::new(body).on_behalf_of(player, &["player"])
}

fn v(kind: Kind) -> Option<Value> {
    Some(Value { kind: Some(kind) })
}

fn schema(key: &str, ty: SettingType, default: Kind) -> DefineSchemaRequest {
    DefineSchemaRequest {
        key: key.into(),
        r#type: ty as i32,
        default_value: v(default),
        scopes: vec![Scope::Global as i32, Scope::Player as i32],
        ..Default::default()
    }
}

/// Defines one schema per type: `b` bool, `i` int in [0, 10], `f` float in [0, 1],
/// `s` string, `e` enum of low/high.
async fn with_schemas() -> Settings {
    let s = domain();
    let mut int = schema("audio.i", SettingType::Int, Kind::IntValue(5));
    (int.min, int.max) = (Some(0.0), Some(10.0));
    let mut float = schema("audio.f", SettingType::Float, Kind::FloatValue(0.5));
    (float.min, float.max) = (Some(0.0), Some(1.0));
    let mut en = schema("gfx.e", SettingType::Enum, Kind::StringValue("low".into()));
    en.allowed_values = vec!["low".into(), "high".into()];
    for req in [
        schema("audio.b", SettingType::Bool, Kind::BoolValue(true)),
        int,
        float,
        schema("ui.s", SettingType::String, Kind::StringValue("en".into())),
        en,
    ] {
        let r = s.define_schema(trusted(req)).await.unwrap();
        assert_eq!(r.schema.unwrap().version, 1);
    }
    s
}

fn set_req(scope: Scope, player: &str, key: &str, value: Kind) -> SetRequest {
    SetRequest {
        scope: scope as i32,
        player_id: player.into(),
        key: key.into(),
        value: v(value),
        expected_version: None,
    }
}

async fn get(s: &Settings, scope: Scope, player: &str, key: &str) -> Result<Setting, Status> {
    let r = s
        .get(trusted(GetRequest {
            scope: scope as i32,
            player_id: player.into(),
            key: key.into(),
        }))
        .await?;
    Ok(r.setting.unwrap_or_default())
}

async fn set(s: &Settings, key: &str, value: Kind) -> Result<Setting, Status> {
    let r = s
        .set(trusted(set_req(Scope::Global, "", key, value)))
        .await?;
    Ok(r.setting.unwrap_or_default())
}

#[tokio::test]
async fn typed_values_are_set_and_read_back() {
    let s = with_schemas().await;
    let d = get(&s, Scope::Global, "", "audio.i").await.unwrap();
    assert_eq!(
        (d.value.clone(), d.is_default, d.version),
        (v(Kind::IntValue(5)), true, 0)
    );
    assert!(d.updated_at.is_none());
    for (key, value) in [
        ("audio.b", Kind::BoolValue(false)),
        ("audio.i", Kind::IntValue(10)),
        ("audio.f", Kind::FloatValue(0.25)),
        ("ui.s", Kind::StringValue("fr".into())),
        ("gfx.e", Kind::StringValue("high".into())),
    ] {
        let w = set(&s, key, value.clone()).await.unwrap();
        assert_eq!((w.version, w.is_default), (1, false));
        let r = get(&s, Scope::Global, "", key).await.unwrap();
        assert_eq!(r.value, v(value));
        assert!(!r.is_default && r.version == 1 && r.updated_at.is_some());
    }
    assert_eq!(
        set(&s, "audio.i", Kind::IntValue(0)).await.unwrap().version,
        2
    );
}

#[tokio::test]
async fn wrong_type_range_and_enum_violations_name_value_and_write_nothing() {
    let s = with_schemas().await;
    for (key, bad) in [
        ("audio.b", Kind::IntValue(1)),
        ("audio.i", Kind::FloatValue(1.0)),
        ("audio.i", Kind::IntValue(11)),
        ("audio.i", Kind::IntValue(-1)),
        ("audio.f", Kind::StringValue("0.5".into())),
        ("audio.f", Kind::FloatValue(1.5)),
        ("audio.f", Kind::FloatValue(f64::NAN)),
        ("ui.s", Kind::BoolValue(true)),
        ("ui.s", Kind::StringValue("x".repeat(4097))),
        ("gfx.e", Kind::StringValue("ultra".into())),
        ("gfx.e", Kind::IntValue(0)),
    ] {
        let e = set(&s, key, bad.clone()).await.unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{key} {bad:?}");
        assert_eq!(e.field_violations[0].field, "value", "{key} {bad:?}");
        let r = get(&s, Scope::Global, "", key).await.unwrap();
        assert!(r.is_default && r.version == 0, "{key} {bad:?} was written");
    }
    let mut missing = set_req(Scope::Global, "", "audio.b", Kind::BoolValue(true));
    missing.value = None;
    let e = s.set(trusted(missing)).await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "value");
}

#[tokio::test]
async fn unknown_keys_and_bad_keys_are_refused() {
    let s = with_schemas().await;
    assert_eq!(
        get(&s, Scope::Global, "", "no.such")
            .await
            .unwrap_err()
            .code,
        Code::NotFound
    );
    assert_eq!(
        set(&s, "no.such", Kind::BoolValue(true))
            .await
            .unwrap_err()
            .code,
        Code::NotFound
    );
    for bad in ["", "Audio.b", "a..b", ".a", "a b", &"a".repeat(129)] {
        let e = get(&s, Scope::Global, "", bad).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, "key", "{bad:?}");
    }
    let e = get(&s, Scope::Unspecified, "", "audio.b")
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "scope");
    let e = get(&s, Scope::Player, "", "audio.b").await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "player_id");
    let e = get(&s, Scope::Global, "p1", "audio.b").await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "player_id");
}

#[tokio::test]
async fn expected_version_mismatch_conflicts() {
    let s = with_schemas().await;
    let mut req = set_req(Scope::Global, "", "audio.i", Kind::IntValue(1));
    req.expected_version = Some(0);
    assert_eq!(
        s.set(trusted(req.clone()))
            .await
            .unwrap()
            .setting
            .unwrap()
            .version,
        1
    );
    let e = s.set(trusted(req.clone())).await.unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    req.expected_version = Some(1);
    req.value = v(Kind::IntValue(2));
    assert_eq!(
        s.set(trusted(req.clone()))
            .await
            .unwrap()
            .setting
            .unwrap()
            .version,
        2
    );
    req.value = v(Kind::IntValue(3));
    assert_eq!(s.set(trusted(req)).await.unwrap_err().code, Code::Conflict);
    assert_eq!(
        get(&s, Scope::Global, "", "audio.i").await.unwrap().value,
        v(Kind::IntValue(2))
    );
}

#[tokio::test]
async fn reset_returns_to_default_and_keeps_counting_versions() {
    let s = with_schemas().await;
    set(&s, "ui.s", Kind::StringValue("fr".into()))
        .await
        .unwrap();
    let reset = |expected| {
        s.reset(trusted(ResetRequest {
            scope: Scope::Global as i32,
            player_id: String::new(),
            key: "ui.s".into(),
            expected_version: expected,
        }))
    };
    assert_eq!(reset(Some(7)).await.unwrap_err().code, Code::Conflict);
    let r = reset(Some(1)).await.unwrap().setting.unwrap();
    assert_eq!(r.value, v(Kind::StringValue("en".into())));
    assert!(r.is_default && r.version == 2);
    let g = get(&s, Scope::Global, "", "ui.s").await.unwrap();
    assert_eq!((g.value, g.is_default, g.version), (r.value, true, 2));
    // Resetting a key already at its default changes nothing.
    assert_eq!(reset(None).await.unwrap().setting.unwrap().version, 2);
    // The version never goes back.
    assert_eq!(
        set(&s, "ui.s", Kind::StringValue("de".into()))
            .await
            .unwrap()
            .version,
        3
    );
}

#[tokio::test]
async fn player_and_global_scopes_are_independent() {
    let s = with_schemas().await;
    set(&s, "audio.i", Kind::IntValue(9)).await.unwrap();
    s.set(trusted(set_req(
        Scope::Player,
        "p1",
        "audio.i",
        Kind::IntValue(2),
    )))
    .await
    .unwrap();
    assert_eq!(
        get(&s, Scope::Global, "", "audio.i").await.unwrap().value,
        v(Kind::IntValue(9))
    );
    assert_eq!(
        get(&s, Scope::Player, "p1", "audio.i").await.unwrap().value,
        v(Kind::IntValue(2))
    );
    // Another player reads the schema default, not the GLOBAL value.
    let other = get(&s, Scope::Player, "p2", "audio.i").await.unwrap();
    assert_eq!(
        (other.value, other.is_default),
        (v(Kind::IntValue(5)), true)
    );
    // A key allowed only globally is refused in PLAYER scope.
    let mut global_only = schema(
        "server.motd",
        SettingType::String,
        Kind::StringValue(String::new()),
    );
    global_only.scopes = vec![Scope::Global as i32];
    s.define_schema(trusted(global_only)).await.unwrap();
    let e = s
        .set(trusted(set_req(
            Scope::Player,
            "p1",
            "server.motd",
            Kind::StringValue("hi".into()),
        )))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "scope");
}

#[tokio::test]
async fn list_pages_through_effective_settings_of_a_scope() {
    let s = domain();
    let mut expected = Vec::new();
    for i in 0..12 {
        let key = format!("game.k{i:02}");
        let mut req = schema(&key, SettingType::Int, Kind::IntValue(i));
        if i % 4 == 3 {
            // Global-only keys are skipped in a PLAYER listing.
            req.scopes = vec![Scope::Global as i32];
        } else {
            expected.push(key);
        }
        s.define_schema(trusted(req)).await.unwrap();
    }
    s.define_schema(trusted(schema(
        "other.k",
        SettingType::Bool,
        Kind::BoolValue(true),
    )))
    .await
    .unwrap();
    s.set(trusted(set_req(
        Scope::Player,
        "p1",
        "game.k01",
        Kind::IntValue(100),
    )))
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = s
            .list(trusted(ListRequest {
                scope: Scope::Player as i32,
                player_id: "p1".into(),
                prefix: "game.".into(),
                page_size: 4,
                page_token: token,
            }))
            .await
            .unwrap();
        assert!(r.settings.len() <= 4);
        for st in r.settings {
            let stored = st.key == "game.k01";
            assert_eq!(st.is_default, !stored, "{}", st.key);
            if stored {
                assert_eq!(st.value, v(Kind::IntValue(100)));
            }
            seen.push(st.key);
        }
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, expected);
    let all = s
        .list_schemas(trusted(ListSchemasRequest {
            prefix: String::new(),
            page_size: 10,
            page_token: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(all.schemas.len(), 10);
    let rest = s
        .list_schemas(trusted(ListSchemasRequest {
            prefix: String::new(),
            page_size: 10,
            page_token: all.next_page_token,
        }))
        .await
        .unwrap();
    assert_eq!(rest.schemas.len(), 3);
    assert_eq!(rest.schemas[2].key, "other.k");
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test]
async fn players_cannot_write_global_or_other_players_settings() {
    let s = with_schemas().await;
    let e = s
        .set(as_player(
            "alice",
            set_req(Scope::Global, "", "audio.i", Kind::IntValue(1)),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    let e = s
        .set(as_player(
            "alice",
            set_req(Scope::Player, "bob", "audio.i", Kind::IntValue(1)),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    let e = s
        .get(as_player(
            "alice",
            GetRequest {
                scope: Scope::Player as i32,
                player_id: "bob".into(),
                key: "audio.i".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    // Nothing was written; alice may set her own and read the global value.
    assert_eq!(
        get(&s, Scope::Global, "", "audio.i").await.unwrap().version,
        0
    );
    assert_eq!(
        get(&s, Scope::Player, "bob", "audio.i")
            .await
            .unwrap()
            .version,
        0
    );
    s.set(as_player(
        "alice",
        set_req(Scope::Player, "alice", "audio.i", Kind::IntValue(1)),
    ))
    .await
    .unwrap();
    let g = s
        .get(as_player(
            "alice",
            GetRequest {
                scope: Scope::Global as i32,
                player_id: String::new(),
                key: "audio.i".into(),
            },
        ))
        .await
        .unwrap();
    assert!(g.setting.unwrap().is_default);
}

#[tokio::test]
async fn redefining_a_schema_checks_default_type_and_revalidates_values() {
    let s = with_schemas().await;
    set(&s, "audio.i", Kind::IntValue(8)).await.unwrap();
    let mut narrower = schema("audio.i", SettingType::Int, Kind::IntValue(5));
    (narrower.min, narrower.max) = (Some(0.0), Some(6.0));
    // The new default must satisfy the new schema.
    let mut bad_default = narrower.clone();
    bad_default.default_value = v(Kind::IntValue(7));
    let e = s.define_schema(trusted(bad_default)).await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "default_value");
    // The type cannot change.
    let e = s
        .define_schema(trusted(schema(
            "audio.i",
            SettingType::Float,
            Kind::FloatValue(1.0),
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition);
    let mut stale = narrower.clone();
    stale.expected_version = Some(0);
    assert_eq!(
        s.define_schema(trusted(stale)).await.unwrap_err().code,
        Code::Conflict
    );
    let r = s.define_schema(trusted(narrower.clone())).await.unwrap();
    assert_eq!(r.schema.unwrap().version, 2);
    // The stored 8 no longer fits: it reads as the default until set again.
    let g = get(&s, Scope::Global, "", "audio.i").await.unwrap();
    assert_eq!(
        (g.value, g.is_default, g.version),
        (v(Kind::IntValue(5)), true, 1)
    );
    // Redefining an identical schema changes nothing.
    let r = s.define_schema(trusted(narrower)).await.unwrap();
    assert_eq!(r.schema.unwrap().version, 2);
    // Schema shape checks name their field.
    let mut e1 = schema("gfx.q", SettingType::Enum, Kind::StringValue("a".into()));
    e1.allowed_values = vec!["a".into(), "a".into()];
    let mut e2 = schema("gfx.q", SettingType::Bool, Kind::BoolValue(true));
    e2.min = Some(1.0);
    let mut e3 = schema("gfx.q", SettingType::Int, Kind::IntValue(1));
    (e3.min, e3.max) = (Some(2.0), Some(1.0));
    let mut e4 = schema("gfx.q", SettingType::Int, Kind::IntValue(1));
    e4.scopes.clear();
    let e5 = schema("gfx.q", SettingType::Unspecified, Kind::IntValue(1));
    for (req, field) in [
        (e1, "allowed_values"),
        (e2, "min"),
        (e3, "max"),
        (e4, "scopes"),
        (e5, "type"),
    ] {
        let e = s.define_schema(trusted(req)).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, field);
    }
}

#[tokio::test]
async fn config_limits_apply() {
    let (ctx, _) = Ctx::for_tests();
    let config = SettingsConfig {
        max_string_bytes: 4,
        ..SettingsConfig::default()
    };
    let s = Settings::new(ctx, config);
    s.define_schema(trusted(schema(
        "ui.s",
        SettingType::String,
        Kind::StringValue("ok".into()),
    )))
    .await
    .unwrap();
    let e = set(&s, "ui.s", Kind::StringValue("12345".into()))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "value");
    set(&s, "ui.s", Kind::StringValue("1234".into()))
        .await
        .unwrap();
}
