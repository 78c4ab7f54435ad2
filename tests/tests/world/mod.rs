//! World and progression on a real appliance: the world-state change feed seen through
//! Watch (and on NATS as `evt.world.changed`), and a quest whose retried Complete pays
//! its reward once, checked in the player's wallet through payment.

use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::CallOptions;
use aicore_proto::aicore::payment::v1 as pay;
use aicore_proto::aicore::quest_system::v1 as qs;
use aicore_proto::aicore::world_state::v1 as ws;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(10))
}

fn set_req(key: &str, data: &str) -> ws::SetRequest {
    ws::SetRequest {
        key: key.into(),
        data: Bytes::from(data.to_string()),
        content_type: "text/plain".into(),
        expected_version: None,
        idempotency_key: String::new(),
    }
}

#[tokio::test]
async fn world_change_feed_is_observed_through_watch_in_order() {
    let app = Appliance::start().await;
    let client = app.client().await;
    let world = ws::WorldStateClient::new(client.clone());
    let nats = app.nats().await;
    let mut published = nats.subscribe("evt.world.changed").await.unwrap();
    nats.flush().await.unwrap();

    world
        .set(set_req("castle.gate", "open"), &opts())
        .await
        .unwrap();
    let snap = world
        .snapshot(
            ws::SnapshotRequest {
                prefix: "castle.".into(),
            },
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(snap.facts.len(), 1);
    let mut feed = world
        .watch(
            ws::WatchRequest {
                from_revision: snap.revision + 1,
                prefix: "castle.".into(),
                keys_only: false,
            },
            &CallOptions::timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.event,
        Some(ws::watch_response::Event::CaughtUp(_))
    ));

    // Another task changes the world; the watcher sees its changes, in order, and nothing
    // outside its prefix.
    let writer = world.clone();
    let task = tokio::spawn(async move {
        for i in 0..10 {
            writer
                .set(set_req("castle.gate", &format!("state {i}")), &opts())
                .await
                .unwrap();
            writer
                .set(set_req("village.well", "dry"), &opts())
                .await
                .unwrap();
        }
    });
    let mut last_revision = snap.revision;
    for i in 0..10 {
        let item = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("a change in time")
            .expect("the stream is open")
            .expect("a change, not an error");
        let Some(ws::watch_response::Event::Change(c)) = item.event else {
            panic!("expected a change");
        };
        assert_eq!(c.key, "castle.gate");
        assert!(c.revision > last_revision);
        last_revision = c.revision;
        let fact = c.fact.expect("the fact as written");
        assert_eq!(fact.data, Bytes::from(format!("state {i}")));
        assert_eq!((c.old_version, c.new_version), (i + 1, i + 2));
    }
    task.await.unwrap();

    // Every change was also published on NATS (through the outbox relay), keys only.
    let mut seen = 0;
    while seen < 21 {
        let m = tokio::time::timeout(Duration::from_secs(10), published.next())
            .await
            .expect("evt.world.changed in time")
            .unwrap();
        let c = ws::FactChange::decode(m.payload).unwrap();
        assert!(c.fact.is_none());
        seen += 1;
    }

    // The history is retained: watching from revision 1 replays the very first change.
    let mut replay = world
        .watch(
            ws::WatchRequest {
                from_revision: 1,
                prefix: String::new(),
                keys_only: true,
            },
            &opts(),
        )
        .await
        .unwrap();
    let item = replay.next().await.unwrap().unwrap();
    let Some(ws::watch_response::Event::Change(c)) = item.event else {
        panic!("expected the first change");
    };
    assert_eq!(
        (c.revision, c.key.as_str(), c.fact),
        (1, "castle.gate", None)
    );
}

/// Registers an account (payment pays rewards only to accounts that exist); its id.
async fn register(client: &aicore_sdk::Client, username: &str) -> String {
    aicore_proto::aicore::auth::v1::AuthClient::new(client.clone())
        .register(
            aicore_proto::aicore::auth::v1::RegisterRequest {
                username: username.into(),
                password: "amber-walrus-quarry".into(),
                display_name: String::new(),
            },
            &opts(),
        )
        .await
        .unwrap()
        .account_id
}

fn quest() -> qs::Quest {
    qs::Quest {
        quest_id: "wolf_hunt".into(),
        title: "Wolf hunt".into(),
        objectives: vec![qs::Objective {
            objective_id: "wolves".into(),
            description: "Kill three wolves".into(),
            target: 3,
        }],
        rewards: vec![
            qs::Reward {
                currency: "GOLD".into(),
                amount: 150,
            },
            qs::Reward {
                currency: "XP".into(),
                amount: 40,
            },
        ],
        prerequisites: Some(qs::Prerequisites {
            completed_quest_ids: vec![],
            facts: vec![qs::FactCondition {
                key: "forest.wolves".into(),
                op: qs::FactOperator::GreaterThan as i32,
                value: Some(aicore_proto::aicore::common::v1::Value {
                    kind: Some(aicore_proto::aicore::common::v1::value::Kind::IntValue(0)),
                }),
            }],
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_quest_completed_with_retries_pays_its_reward_once() {
    let app = Appliance::start().await;
    let client = app.client().await;
    let quests = qs::QuestSystemClient::new(client.clone());
    let world = ws::WorldStateClient::new(client.clone());
    let payment = pay::PaymentClient::new(client.clone());
    // The player has an account: payment pays rewards only to accounts that exist.
    let p1 = register(&client, "questing-player").await;
    let nats = app.nats().await;
    let mut completed = nats.subscribe("evt.quest.completed").await.unwrap();
    nats.flush().await.unwrap();

    quests
        .define_quest(
            qs::DefineQuestRequest {
                quest: Some(quest()),
                expected_version: Some(0),
            },
            &opts(),
        )
        .await
        .unwrap();
    // As the player (through the gateway's caller headers): the world-fact prerequisite
    // is read from world-state over NATS.
    let player = CallOptions {
        caller: Some(aicore_proto::Caller {
            account_id: p1.clone(),
            roles: vec!["player".into()],
        }),
        ..opts()
    };
    let accept = qs::AcceptRequest {
        player_id: p1.clone(),
        quest_id: "wolf_hunt".into(),
    };
    let e = quests.accept(accept.clone(), &player).await.unwrap_err();
    assert_eq!(e.code, aicore_proto::Code::FailedPrecondition);
    world
        .set(set_req("forest.wolves", "12"), &opts())
        .await
        .unwrap();
    let available = quests
        .list_available(
            qs::ListAvailableRequest {
                player_id: p1.clone(),
                ..Default::default()
            },
            &player,
        )
        .await
        .unwrap();
    assert_eq!(available.quests.len(), 1);
    quests.accept(accept, &player).await.unwrap();
    for i in 0..3 {
        quests
            .progress(
                qs::ProgressRequest {
                    player_id: p1.clone(),
                    quest_id: "wolf_hunt".into(),
                    objective_id: "wolves".into(),
                    delta: 1,
                    idempotency_key: format!("kill-{i}"),
                },
                &opts(),
            )
            .await
            .unwrap();
    }
    let complete = qs::CompleteRequest {
        player_id: p1.clone(),
        quest_id: "wolf_hunt".into(),
    };
    // Retries, some of them racing each other: one completion, one payment.
    let racing: Vec<_> = (0..4)
        .map(|_| {
            let (quests, complete, player) = (quests.clone(), complete.clone(), player.clone());
            tokio::spawn(async move { quests.complete(complete, &player).await })
        })
        .collect();
    let mut replies = Vec::new();
    for r in racing {
        replies.push(r.await.unwrap().unwrap());
    }
    replies.push(quests.complete(complete.clone(), &player).await.unwrap());
    let first = &replies[0];
    assert_eq!(first.reward_transaction_ids.len(), 2);
    for r in &replies {
        assert_eq!(r.reward_transaction_ids, first.reward_transaction_ids);
        let pq = r.player_quest.as_ref().unwrap();
        assert_eq!(
            (pq.state, pq.completions),
            (qs::QuestState::Completed as i32, 1)
        );
    }
    let wallet = payment
        .get_wallet(
            pay::GetWalletRequest {
                player_id: p1.clone(),
                currency: String::new(),
            },
            &opts(),
        )
        .await
        .unwrap();
    let balances: Vec<(String, i64)> = wallet
        .balances
        .into_iter()
        .map(|m| (m.currency, m.amount))
        .collect();
    assert_eq!(
        balances,
        vec![("GOLD".to_string(), 150), ("XP".to_string(), 40)]
    );
    let m = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .expect("evt.quest.completed in time")
        .unwrap();
    let event = qs::QuestCompleted::decode(m.payload).unwrap();
    assert_eq!(event.reward_transaction_ids, first.reward_transaction_ids);
    // Exactly one completion event.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), completed.next())
            .await
            .is_err()
    );
    // Completed and not repeatable: accepting again is refused naming the state.
    let e = quests
        .accept(
            qs::AcceptRequest {
                player_id: p1.clone(),
                quest_id: "wolf_hunt".into(),
            },
            &player,
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("COMPLETED"), "{e}");
}

/// Collects what an OTLP/HTTP collector would receive: every `POST /v1/traces` body.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use axum::routing::post;
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
    let seen: Seen = Default::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                |axum::extract::State(seen): axum::extract::State<Seen>, body: Bytes| async move {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    seen.lock().unwrap().push(v);
                    "{}"
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// The spans of trace `trace_id` the collector has received.
fn spans_of(seen: &std::sync::Mutex<Vec<serde_json::Value>>, trace_id: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for body in seen.lock().unwrap().iter() {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    if span["traceId"] == trace_id {
                        out.push(span.clone());
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn a_quest_completion_is_one_trace_from_quest_through_payment_to_the_outbox() {
    let (endpoint, seen) = collector().await;
    let app = Appliance::start_serving_with_config(
        &["auth", "payment", "quest_system", "world_state"],
        &format!("[traces]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 50\n"),
    )
    .await;
    let client = app.client().await;
    let quests = qs::QuestSystemClient::new(client.clone());
    let world = ws::WorldStateClient::new(client.clone());
    let p1 = register(&client, "traced-player").await;
    quests
        .define_quest(
            qs::DefineQuestRequest {
                quest: Some(quest()),
                expected_version: Some(0),
            },
            &opts(),
        )
        .await
        .unwrap();
    world
        .set(set_req("forest.wolves", "12"), &opts())
        .await
        .unwrap();
    let player = CallOptions {
        caller: Some(aicore_proto::Caller {
            account_id: p1.clone(),
            roles: vec!["player".into()],
        }),
        ..opts()
    };
    quests
        .accept(
            qs::AcceptRequest {
                player_id: p1.clone(),
                quest_id: "wolf_hunt".into(),
            },
            &player,
        )
        .await
        .unwrap();
    quests
        .progress(
            qs::ProgressRequest {
                player_id: p1.clone(),
                quest_id: "wolf_hunt".into(),
                objective_id: "wolves".into(),
                delta: 3,
                idempotency_key: "kill-all".into(),
            },
            &opts(),
        )
        .await
        .unwrap();
    let nats = app.nats().await;
    let mut completed = nats.subscribe("evt.quest.completed").await.unwrap();
    nats.flush().await.unwrap();

    // The game server's own span starts the trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    quests
        .complete(
            qs::CompleteRequest {
                player_id: p1.clone(),
                quest_id: "wolf_hunt".into(),
            },
            &CallOptions {
                traceparent: Some(format!("00-{trace_id}-{client_span}-01")),
                ..player.clone()
            },
        )
        .await
        .unwrap();

    // quest → payment (one Credit per reward currency) → their events; quest → its event.
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    let (complete, credits, produced) = loop {
        let spans = spans_of(&seen, trace_id);
        let complete = spans
            .iter()
            .find(|s| s["name"] == "svc.quest_system.v1.complete")
            .cloned();
        if let Some(complete) = complete {
            let credits: Vec<_> = spans
                .iter()
                .filter(|s| s["name"] == "svc.payment.v1.credit")
                .cloned()
                .collect();
            let produced: Vec<_> = spans.iter().filter(|s| s["kind"] == 4).cloned().collect();
            // Two credits, each with its ledger event, and the completion event.
            if credits.len() == 2 && produced.len() >= 3 {
                break (complete, credits, produced);
            }
        }
        assert!(
            std::time::Instant::now() < give_up,
            "spans of the trace so far: {spans:#?}\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(complete["parentSpanId"], client_span);
    assert_eq!(complete["kind"], 2);
    for credit in &credits {
        assert_eq!(credit["parentSpanId"], complete["spanId"], "{credit:#}");
        // Each credit's ledger event is published in a span of its own, its child.
        assert!(
            produced.iter().any(|p| p["parentSpanId"] == credit["spanId"]),
            "no event span under {credit:#}: {produced:#?}"
        );
    }
    let quest_event = produced
        .iter()
        .find(|p| p["name"] == "evt.quest.completed")
        .expect("the completion event's span");
    assert_eq!(quest_event["parentSpanId"], complete["spanId"]);
    // Its consumers continue the trace from that span.
    let m = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .expect("evt.quest.completed in time")
        .unwrap();
    let tp = m.headers.unwrap().get("traceparent").unwrap().to_string();
    assert_eq!(
        tp,
        format!(
            "00-{trace_id}-{}-01",
            quest_event["spanId"].as_str().unwrap()
        )
    );
}
