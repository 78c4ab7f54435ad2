//! performance-mode on a real appliance, with ai-router reading it over NATS: a player
//! sets their own mode over HTTP, and the router's next decision for that player honours
//! the mode's latency budget and cost ceiling (Explain says which model each excluded and
//! why); a player may not set another's mode nor the global default.

use aicore_e2e::openai::FakeOpenAi;
use aicore_proto::Code;
use aicore_proto::aicore::ai_router::v1 as router;
use aicore_proto::aicore::model_management::v1 as mm;

use crate::ai::{opts, with_provider};
use crate::gateway::http::Http;

/// Registers a small completion model on provider `lan` costing `micros` per million
/// tokens for input and for output each.
async fn register(app: &aicore_e2e::Appliance, id: &str, micros: i64) {
    mm::ModelManagementClient::new(app.client().await)
        .register(
            mm::RegisterRequest {
                model_id: id.into(),
                spec: Some(mm::ModelSpec {
                    provider_id: "lan".into(),
                    provider_model: "openai".into(),
                    capabilities: vec![mm::Capability::Completion as i32],
                    context_length: 8192,
                    tier: mm::ModelTier::Small as i32,
                    cost: Some(mm::TokenCost {
                        currency: "USD".into(),
                        input_micros_per_million_tokens: micros,
                        output_micros_per_million_tokens: micros,
                    }),
                    ..Default::default()
                }),
            },
            &opts(),
        )
        .await
        .unwrap_or_else(|e| panic!("registering {id}: {e}"));
}

fn route_for(player: &str) -> router::ExplainRequest {
    router::ExplainRequest {
        target: Some(router::explain_request::Target::Route(router::RouteRequest {
            capability: router::Capability::Completion as i32,
            player_id: player.into(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn a_players_mode_set_over_http_bounds_the_ai_routers_choice() {
    let fake = FakeOpenAi::start().await;
    // Models without history are expected to take 3 s: over battery's 2 s budget, within
    // balanced's 5 s.
    let (app, _keys) =
        with_provider(&fake.base_url, "", "[domains.ai_router]\nunknown_latency_ms = 3000\nmodels_cache_ms = 1\n").await;
    register(&app, "cheap", 50).await;
    // 4 000 000 micros per million tokens: above battery's ceiling (1 000 000), within
    // balanced's (5 000 000).
    register(&app, "dear", 2_000_000).await;

    let http = Http::new(&app.http_url);
    let login = |name: &'static str| {
        let http = &http;
        async move {
            let body = format!(r#"{{"username":"{name}","password":"violet-otter-lantern"}}"#);
            assert_eq!(http.post("/v1/auth/register", &body, &[]).await.status, 200);
            let r = http.post("/v1/auth/login", &body, &[]).await.json();
            (
                format!("Bearer {}", r["accessToken"].as_str().unwrap()),
                r["accountId"].as_str().unwrap().to_string(),
            )
        }
    };
    let (bearer, id) = login("runa").await;
    let (other_bearer, _) = login("odo").await;
    let set = |who: &str, profile: &str| format!(r#"{{"playerId":"{who}","profile":"{profile}"}}"#);

    // Runa starts on the configured default and picks battery.
    let got = http.post("/v1/performance_mode/get", &format!(r#"{{"playerId":"{id}"}}"#), &[("authorization", &bearer)]).await;
    assert_eq!(got.status, 200, "{}", got.json());
    assert_eq!(got.json()["mode"]["profile"]["name"], "balanced");
    let r = http.post("/v1/performance_mode/set", &set(&id, "battery"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let mode = r.json()["mode"].clone();
    assert_eq!(mode["profile"]["name"], "battery");
    assert_eq!(mode["profile"]["aiLatencyBudget"], "2s");
    assert_eq!(mode["source"], "PROFILE_SOURCE_PLAYER");

    // Under battery, no model fits: the cheap one is over the latency budget, the dear one
    // over the cost ceiling.
    let routes = router::AiRouterClient::new(app.client().await);
    let e = routes.explain(route_for(&id), &opts()).await.unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition, "{e}");
    assert!(e.message.contains("under profile battery"), "{e}");
    assert!(e.message.contains("cheap: over latency budget (3000 ms expected)"), "{e}");
    assert!(e.message.contains("dear: cost 4000000 micros per million tokens above profile battery's ceiling"), "{e}");

    // Balanced allows both; the router says the profile came from performance-mode.
    let r = http.post("/v1/performance_mode/set", &set(&id, "balanced"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let why = routes.explain(route_for(&id), &opts()).await.unwrap();
    let d = why.decision.unwrap();
    assert!(d.reason.contains("profile balanced (performance-mode)"), "{}", d.reason);
    for m in ["cheap", "dear"] {
        assert!(why.candidates.iter().any(|c| c.model_id == m && c.eligible), "{m}: {:?}", why.candidates);
    }

    // Odo may not choose for Runa, nor set everyone's default.
    let r = http.post("/v1/performance_mode/set", &set(&id, "quality"), &[("authorization", &other_bearer)]).await;
    assert_eq!(r.status, 403, "{}", r.json());
    let r = http
        .post("/v1/performance_mode/set_default", r#"{"profile":"battery"}"#, &[("authorization", &other_bearer)])
        .await;
    assert_eq!(r.status, 403, "{}", r.json());
    // An unknown profile is refused naming the field.
    let r = http.post("/v1/performance_mode/set", &set(&id, "ultra"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 400, "{}", r.json());
    assert!(r.json().to_string().contains("profile"), "{}", r.json());
}
