//! body-broker-integration on a real appliance with payment not served: a player's
//! Bootstrap over HTTP answers with every other section (account, settings and quests —
//! empty for a new player —, world snapshot, game time, weather, performance profile) and
//! names only the wallet as missing, with UNAVAILABLE; a player may not bootstrap another.

use aicore_e2e::Appliance;
use aicore_proto::aicore::weather_manager::v1 as wm;
use aicore_proto::aicore::world_state::v1 as ws;

use crate::ai::opts;
use crate::gateway::http::Http;
use crate::weather::cycle_region;

#[tokio::test]
async fn bootstrap_over_http_composes_the_session_and_names_the_domain_that_is_down() {
    // Every domain but payment.
    let served: Vec<&'static str> = aicore_e2e::domains().into_iter().filter(|d| *d != "payment").collect();
    let app = Appliance::start_serving(&served).await;

    let world = ws::WorldStateClient::new(app.client().await);
    world
        .set(
            ws::SetRequest { key: "gate.north".into(), data: b"open".to_vec().into(), content_type: "text/plain".into(), ..Default::default() },
            &opts(),
        )
        .await
        .unwrap();
    wm::WeatherManagerClient::new(app.client().await)
        .define_region(
            wm::DefineRegionRequest {
                region: Some(cycle_region("marsh", [wm::WeatherCondition::Rain, wm::WeatherCondition::Cloudy, wm::WeatherCondition::Clear], 3600)),
                expected_version: None,
            },
            &opts(),
        )
        .await
        .unwrap();

    let http = Http::new(&app.http_url);
    let login = |name: &'static str| {
        let http = &http;
        async move {
            let body = format!(r#"{{"username":"{name}","password":"violet-otter-lantern"}}"#);
            assert_eq!(http.post("/v1/auth/register", &body, &[]).await.status, 200);
            let r = http.post("/v1/auth/login", &body, &[]).await.json();
            (format!("Bearer {}", r["accessToken"].as_str().unwrap()), r["accountId"].as_str().unwrap().to_string())
        }
    };
    let (bearer, id) = login("tamsin").await;
    let (_, other) = login("wren").await;

    let r = http
        .post("/v1/body_broker_integration/bootstrap", r#"{"weatherRegion":"marsh"}"#, &[("authorization", &bearer)])
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let b = r.json();
    assert_eq!(b["profile"]["accountId"], id.as_str(), "{b}");
    assert_eq!(b["profile"]["username"], "tamsin");
    assert_eq!(b["world"][0]["key"], "gate.north", "{b}");
    assert!(b["worldRevision"].as_str().is_some_and(|r| r != "0"), "{b}");
    assert!(b["gameTime"]["scale"].as_f64().is_some_and(|s| s > 0.0), "{b}");
    assert_eq!(b["weather"]["regionId"], "marsh", "{b}");
    assert!(b["weather"]["condition"].as_str().is_some_and(|c| c.starts_with("WEATHER_CONDITION_")), "{b}");
    assert_eq!(b["performance"]["name"], "balanced", "{b}");
    // payment is not served: only the wallet is missing, and why.
    assert_eq!(b["unavailable"], serde_json::json!(["SECTION_WALLET"]), "{b}");
    assert_eq!(b["missing"][0]["section"], "SECTION_WALLET");
    assert_eq!(b["missing"][0]["code"], "CODE_UNAVAILABLE", "{b}");
    assert!(b["wallet"].as_array().is_none_or(|w| w.is_empty()), "{b}");

    // Another player's session is refused.
    let theirs = format!(r#"{{"playerId":"{other}"}}"#);
    let r = http.post("/v1/body_broker_integration/bootstrap", &theirs, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 403, "{}", r.json());
}
