//! npc-behavior on a real appliance: an NPC defined over NATS decides by time-manager's
//! game time (paused and set by the test), a player interacts over the gateway and gets a
//! line from the offline provider, and the NPC's relation to and memory of the player
//! survive a restart on the same data directory.

use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::aicore::npc_behavior::v1 as npc;
use aicore_proto::aicore::time_manager::v1 as tm;

use crate::ai::opts;
use crate::gateway::http::Http;
use crate::weather::freeze_at;

const HOUR: i64 = 3600;

fn guard() -> npc::NpcDefinition {
    let c = |input: &str, curve: npc::Curve| npc::Consideration {
        input: input.into(),
        curve: curve as i32,
        ..Default::default()
    };
    npc::NpcDefinition {
        npc_id: "gate-guard".into(),
        name: "Brann".into(),
        traits: [("duty".to_string(), 0.9)].into(),
        needs: vec![npc::Need { need_id: "rest".into(), value: 0.9, decay_per_game_hour: 0.05 }],
        schedule: vec![npc::ScheduleEntry {
            from_hour: 6,
            to_hour: 20,
            activity: "guard".into(),
            location_id: "north-gate".into(),
        }],
        actions: vec![
            npc::Action {
                action_id: "stand-guard".into(),
                base_score: 1.0,
                considerations: vec![c("schedule:guard", npc::Curve::Linear), c("trait:duty", npc::Curve::Linear)],
                ..Default::default()
            },
            npc::Action {
                action_id: "sleep".into(),
                base_score: 0.5,
                considerations: vec![c("need:rest", npc::Curve::Inverse)],
                ..Default::default()
            },
            npc::Action {
                action_id: "chat".into(),
                base_score: 0.6,
                considerations: vec![c("relation:affinity", npc::Curve::Linear)],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn decisions_follow_game_time_and_a_relation_survives_a_restart() {
    let mut app = Appliance::start().await;
    let dir = app.data_dir.clone();
    let client = app.client().await;
    let time = tm::TimeManagerClient::new(client.clone());
    let npcs = npc::NpcBehaviorClient::new(client);
    npcs.define(npc::DefineRequest { npc: Some(guard()), expected_version: None }, &opts())
        .await
        .unwrap();
    let http = Http::new(&app.http_url);
    let body = r#"{"username":"tamsin","password":"violet-otter-lantern"}"#;
    let me = http.post("/v1/auth/register", body, &[]).await.json()["accountId"]
        .as_str()
        .unwrap()
        .to_string();
    let token = http.post("/v1/auth/login", body, &[]).await.json()["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    let decide = |http: Http, token: String| async move {
        let r = http
            .call("/v1/npc_behavior/decide", r#"{"npcId":"gate-guard"}"#, &token)
            .await;
        assert_eq!(r.status, 200, "{}", r.json());
        r.json()
    };

    // Noon: on duty. 22:00: off duty, so chatting (neutral affinity 0.5 × 0.6) beats sleep.
    freeze_at(&time, 12 * HOUR).await;
    let r = decide(http.clone(), token.clone()).await;
    assert_eq!(r["best"]["actionId"], "stand-guard", "{r}");
    assert_eq!(r["currentActivity"], "guard");
    freeze_at(&time, 22 * HOUR).await;
    let r = decide(http.clone(), token.clone()).await;
    assert_eq!(r["best"]["actionId"], "chat", "{r}");
    assert_eq!(r["ranked"].as_array().unwrap().len(), 3);

    // A player interacts as themselves and gets a line (offline provider: no model).
    let interact = format!(
        r#"{{"npcId":"gate-guard","playerId":"{me}","summary":"shared a flask","sentiment":0.8,"trustDelta":0.5,"idempotencyKey":"i-1","wantLine":true,"playerSaid":"Cold night, friend?"}}"#
    );
    let r = http.call("/v1/npc_behavior/interact", &interact, &token).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let j = r.json();
    assert_eq!(j["lineOffline"], true);
    assert!(!j["line"].as_str().unwrap().is_empty());
    let before = j["relation"].clone();
    assert_eq!(before["interactions"], 1);
    let other = interact.replace(&me, "someone-else");
    assert_eq!(http.call("/v1/npc_behavior/interact", &other, &token).await.status, 403);

    // Restart: the relation and its memory are still there.
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
    let app = Appliance::start_in(&dir).await;
    let npcs = npc::NpcBehaviorClient::new(app.client().await);
    let got = npcs
        .get(npc::GetRequest { npc_id: "gate-guard".into(), player_id: me.clone() }, &opts())
        .await
        .unwrap();
    let rel = got.relation.unwrap();
    assert_eq!(rel.interactions, 1);
    assert!((rel.affinity - 0.16).abs() < 1e-9, "{rel:?}");
    assert!((rel.trust - 0.6).abs() < 1e-9, "{rel:?}");
    assert_eq!(rel.memories[0].summary, "shared a flask");
    assert_eq!(before["affinity"].as_f64(), Some(rel.affinity));
}

#[tokio::test]
async fn needs_decay_as_game_time_passes_without_a_tick_call() {
    let app = Appliance::start().await;
    let client = app.client().await;
    let time = tm::TimeManagerClient::new(client.clone());
    let npcs = npc::NpcBehaviorClient::new(client);
    npcs.define(npc::DefineRequest { npc: Some(guard()), expected_version: None }, &opts())
        .await
        .unwrap();
    // One game hour per real second: time-manager publishes `evt.time.tick` each hour.
    time.set_scale(tm::SetScaleRequest { scale: 3600.0 }, &opts()).await.expect("set scale");
    let state = || async {
        npcs.get(npc::GetRequest { npc_id: "gate-guard".into(), player_id: String::new() }, &opts())
            .await
            .unwrap()
            .state
            .unwrap()
    };
    // Nobody calls Tick: the first tick seen sets the NPC's clock, later ones decay "rest"
    // (0.05 a game hour) by the game hours between them.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let (first, later) = loop {
        let s = state().await;
        if s.ticked_to_game_seconds >= 0 {
            break (s.ticked_to_game_seconds, s);
        }
        assert!(tokio::time::Instant::now() < give_up, "no tick reached the NPC: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(first % HOUR, 0, "ticks come on the game hour");
    let later = loop {
        let s = state().await;
        if s.ticked_to_game_seconds >= first + 2 * HOUR {
            break s;
        }
        assert!(tokio::time::Instant::now() < give_up, "needs stopped following: {later:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let hours = (later.ticked_to_game_seconds - first) / HOUR;
    let expected = (0.9 - 0.05 * hours as f64).max(0.0);
    assert!((later.needs["rest"] - expected).abs() < 1e-9, "{hours} h: {later:?}");
}
