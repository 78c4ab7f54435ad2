//! story-teller on a real appliance with no model: a player walks an arc over the gateway,
//! each scene narrated over Server-Sent Events (a header naming the knowledge-base
//! documents it grounded on, the template filled with their facts, a footer with the
//! choices offered now), a choice gated on a world-state fact refused until the fact
//! holds, and the arc finished.

use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::aicore::common::v1::{Value, value};
use aicore_proto::aicore::knowledge_base::v1 as kb;
use aicore_proto::aicore::story_teller::v1 as st;
use aicore_proto::aicore::world_state::v1 as ws;
use bytes::Bytes;

use crate::ai::opts;
use crate::gateway::http::Http;

fn arc() -> st::Arc {
    let node = |id: &str, template: &str, choices: Vec<st::Choice>| st::Node {
        node_id: id.into(),
        title: format!("The {id}"),
        template: template.into(),
        choices,
        ..Default::default()
    };
    let choice = |id: &str, to: &str| st::Choice {
        choice_id: id.into(),
        label: format!("Go {id}"),
        target_node_id: to.into(),
        conditions: vec![],
    };
    let mut gate = node("gate", "{player_name} stands at the gate. {facts}", vec![choice("enter", "mill")]);
    gate.knowledge_tags = vec!["place:mill".into()];
    let mut cellar = choice("cellar", "cellar");
    cellar.conditions.push(st::ChoiceCondition {
        condition: Some(st::choice_condition::Condition::Fact(st::FactCondition {
            key: "mill.key_found".into(),
            op: st::FactOperator::Equals as i32,
            value: Some(Value { kind: Some(value::Kind::BoolValue(true)) }),
        })),
    });
    st::Arc {
        arc_id: "old-mill".into(),
        title: "The Old Mill".into(),
        start_node_id: "gate".into(),
        nodes: vec![
            gate,
            node("mill", "Dust and silence.", vec![cellar, choice("leave", "end")]),
            node("cellar", "Below, a locked chest.", vec![choice("leave", "end")]),
            node("end", "You walk away.", vec![]),
        ],
        ..Default::default()
    }
}

/// Narrates the player's current scene over SSE: (header, text, footer) as JSON.
async fn narrate(http: &Http, bearer: &str, body: &str) -> (serde_json::Value, String, serde_json::Value) {
    let (status, _, mut events) = http
        .stream("/v1/story_teller/narrate", body, &[("authorization", bearer)])
        .await;
    assert_eq!(status, 200);
    let (mut header, mut text, mut footer) = (None, String::new(), None);
    loop {
        let e = events.next(Duration::from_secs(20)).await.expect("an event");
        match e.event.as_str() {
            "message" => {
                let j = e.json();
                if let Some(h) = j.get("header") {
                    header = Some(h.clone());
                } else if let Some(t) = j.get("text") {
                    text.push_str(t.as_str().unwrap());
                } else {
                    footer = Some(j["footer"].clone());
                }
            }
            "end" => break,
            other => panic!("{other}: {}", e.data),
        }
    }
    (header.expect("a header"), text, footer.expect("a footer"))
}

#[tokio::test]
async fn a_player_walks_an_arc_with_narration_streamed_over_sse() {
    let app = Appliance::start().await;
    let client = app.client().await;
    kb::KnowledgeBaseClient::new(client.clone())
        .add_document(
            kb::AddDocumentRequest {
                document_id: "mill-history".into(),
                title: "The Old Mill".into(),
                body: "The mill burned in the war of ash.".into(),
                tags: vec!["place:mill".into()],
                metadata: None,
                idempotency_key: "doc-1".into(),
            },
            &opts(),
        )
        .await
        .unwrap();
    let stories = st::StoryTellerClient::new(client.clone());
    stories
        .define_arc(st::DefineArcRequest { arc: Some(arc()), expected_version: None }, &opts())
        .await
        .unwrap();

    let http = Http::new(&app.http_url);
    let body = r#"{"username":"oskar","password":"violet-otter-lantern"}"#;
    let me = http.post("/v1/auth/register", body, &[]).await.json()["accountId"]
        .as_str()
        .unwrap()
        .to_string();
    let token = http.post("/v1/auth/login", body, &[]).await.json()["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    let bearer = format!("Bearer {token}");
    let ids = format!(r#""playerId":"{me}","arcId":"old-mill""#);
    let r = http.call("/v1/story_teller/start_arc", &format!("{{{ids}}}"), &token).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["playerArc"]["offeredChoiceIds"][0], "enter");

    // The gate, narrated: grounded on the lore, the name filled in as given.
    let (h, text, f) = narrate(&http, &bearer, &format!(r#"{{{ids},"playerName":"Oskar"}}"#)).await;
    assert_eq!(h["offline"], true);
    assert_eq!(h["sourceDocumentIds"][0], "mill-history");
    assert_eq!(text, "Oskar stands at the gate. The Old Mill: The mill burned in the war of ash.");
    assert_eq!(f["choices"][0]["choiceId"], "enter");

    let advance = |from: &str, choice: &str, key: &str| {
        format!(r#"{{{ids},"fromNodeId":"{from}","choiceId":"{choice}","idempotencyKey":"{key}"}}"#)
    };
    let r = http.call("/v1/story_teller/advance", &advance("gate", "enter", "k1"), &token).await;
    assert_eq!(r.status, 200, "{}", r.json());
    // In the mill the cellar is not offered until the key is found.
    let (_, text, f) = narrate(&http, &bearer, &format!("{{{ids}}}")).await;
    assert_eq!(text, "Dust and silence.");
    let offered: Vec<&str> = f["choices"].as_array().unwrap().iter().map(|c| c["choiceId"].as_str().unwrap()).collect();
    assert_eq!(offered, ["leave"]);
    let r = http.call("/v1/story_teller/advance", &advance("mill", "cellar", "k2"), &token).await;
    assert_eq!((r.status, r.field().as_str()), (412, "choice_id"), "{}", r.json());
    ws::WorldStateClient::new(client)
        .set(
            ws::SetRequest {
                key: "mill.key_found".into(),
                data: Bytes::from_static(b"true"),
                content_type: "application/json".into(),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap();
    let r = http.call("/v1/story_teller/advance", &advance("mill", "cellar", "k3"), &token).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let (_, text, _) = narrate(&http, &bearer, &format!("{{{ids}}}")).await;
    assert_eq!(text, "Below, a locked chest.");
    // A stale client is Conflict; then the ending.
    let r = http.call("/v1/story_teller/advance", &advance("mill", "leave", "k4"), &token).await;
    assert_eq!(r.status, 409);
    let r = http.call("/v1/story_teller/advance", &advance("cellar", "leave", "k5"), &token).await;
    assert_eq!(r.json()["playerArc"]["state"], "ARC_STATE_FINISHED");
    let r = http.call("/v1/story_teller/get_arc", &format!("{{{ids}}}"), &token).await;
    let j = r.json();
    let path: Vec<&str> = j["playerArc"]["path"].as_array().unwrap().iter().map(|s| s["choiceId"].as_str().unwrap()).collect();
    assert_eq!(path, ["enter", "cellar", "leave"]);
    // Another player's arc is not this player's to read.
    let r = http.call("/v1/story_teller/get_arc", r#"{"playerId":"someone-else","arcId":"old-mill"}"#, &token).await;
    assert_eq!(r.status, 403);
}
