//! environmental-narrative on a real appliance, with time-manager's clock paused and set
//! and weather-manager's region overridden by the test: a night-and-rain fragment appears
//! to a player over the gateway only while both hold, each discovery is published once on
//! `evt.narrative.discovered`, and a player cannot discover for another.

use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::aicore::environmental_narrative::v1 as en;
use aicore_proto::aicore::time_manager::v1 as tm;
use aicore_proto::aicore::weather_manager::v1 as wm;
use futures::StreamExt;
use prost::Message;

use crate::ai::opts;
use crate::gateway::http::Http;
use crate::weather::{calm_region, define, freeze_at, override_req};

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

async fn found(http: &Http, token: &str, player: &str) -> (u16, Vec<(String, bool)>) {
    let r = http
        .call(
            "/v1/environmental_narrative/discover",
            &format!(r#"{{"playerId":"{player}","locationId":"old-mill"}}"#),
            token,
        )
        .await;
    let items = if r.status == 200 {
        r.json()["discoveries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|d| {
                (
                    d["fragment"]["fragmentId"].as_str().unwrap().to_string(),
                    d["firstTime"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    (r.status, items)
}

#[tokio::test]
async fn a_fragment_appears_only_while_its_weather_and_hours_hold() {
    let app = Appliance::start().await;
    let client = app.client().await;
    let time = tm::TimeManagerClient::new(client.clone());
    let weather = wm::WeatherManagerClient::new(client.clone());
    let narrative = en::EnvironmentalNarrativeClient::new(client);
    freeze_at(&time, 2 * DAY + 23 * HOUR).await;
    define(&weather, calm_region("marsh"), None).await;
    let fragment = |id: &str, conditions: Option<en::Conditions>| en::Fragment {
        fragment_id: id.into(),
        location_id: "old-mill".into(),
        region_id: "marsh".into(),
        title: id.into(),
        text: format!("The {id} of the old mill."),
        conditions,
        ..Default::default()
    };
    let ghost = en::Conditions {
        from_hour: 22,
        to_hour: 4,
        weather: vec![en::WeatherCondition::Rain as i32],
        ..Default::default()
    };
    for f in [fragment("ghost", Some(ghost)), fragment("sign", None)] {
        narrative
            .define_fragment(en::DefineFragmentRequest { fragment: Some(f), expected_version: None }, &opts())
            .await
            .unwrap();
    }
    let http = Http::new(&app.http_url);
    let body = r#"{"username":"wren","password":"violet-otter-lantern"}"#;
    let me = http.post("/v1/auth/register", body, &[]).await.json()["accountId"]
        .as_str()
        .unwrap()
        .to_string();
    let login = http.post("/v1/auth/login", body, &[]).await.json();
    let token = login["accessToken"].as_str().unwrap().to_string();

    // Night, but clear: only the sign.
    let (status, got) = found(&http, &token, &me).await;
    assert_eq!((status, got), (200, vec![("sign".to_string(), true)]));
    // Night and rain: the ghost, found for the first time.
    weather.set_override(override_req("marsh", wm::WeatherCondition::Rain), &opts()).await.unwrap();
    let (_, got) = found(&http, &token, &me).await;
    assert_eq!(got, [("ghost".to_string(), true), ("sign".to_string(), false)]);
    // Rain at noon: gone again. Past midnight, still night: back, not new.
    freeze_at(&time, 3 * DAY + 12 * HOUR).await;
    let (_, got) = found(&http, &token, &me).await;
    assert_eq!(got, [("sign".to_string(), false)]);
    freeze_at(&time, 3 * DAY + 2 * HOUR).await;
    let (_, got) = found(&http, &token, &me).await;
    assert_eq!(got, [("ghost".to_string(), false), ("sign".to_string(), false)]);
    // A player discovers only for themselves.
    let (status, _) = found(&http, &token, "someone-else").await;
    assert_eq!(status, 403);

    // Each first discovery was published once.
    let mut events = app.events("narrative", "evt.narrative.discovered").await;
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), events.next()).await {
        let m = m.unwrap();
        let e = en::FragmentDiscovered::decode(m.payload.clone()).unwrap();
        assert_eq!((e.player_id.as_str(), e.location_id.as_str()), (me.as_str(), "old-mill"));
        seen.push(e.fragment_id);
        m.ack().await.unwrap();
    }
    assert_eq!(seen, ["sign", "ghost"]);

    // The studio deletes the ghost (a player may not): nobody finds it any more.
    let del = r#"{"fragmentId":"ghost"}"#;
    assert_eq!(http.call("/v1/environmental_narrative/delete_fragment", del, &token).await.status, 403);
    let (_, got) = found(&http, &token, &me).await;
    assert_eq!(got, [("ghost".to_string(), false), ("sign".to_string(), false)]);
    let r = narrative
        .delete_fragment(
            en::DeleteFragmentRequest { fragment_id: "ghost".into(), ..Default::default() },
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted_version, 1);
    let (_, got) = found(&http, &token, &me).await;
    assert_eq!(got, [("sign".to_string(), false)]);
}
