//! ai-router and ai-integration together: a request without a model follows the router's
//! choice, falls back along its chain when the chosen model fails before its first token,
//! the failing model's circuit opens (it is skipped, and Explain says why), half-opens
//! after the cool-down, and closes after a successful trial.

use std::time::Duration;

use aicore_e2e::openai::FakeOpenAi;
use aicore_proto::aicore::ai_integration::v1 as ai;
use aicore_proto::aicore::ai_router::v1 as router;
use aicore_proto::aicore::model_management::v1 as mm;

use super::{opts, register, with_provider};

async fn served(client: &ai::AiIntegrationClient<aicore_sdk::Client>) -> ai::ServedBy {
    let r = client
        .complete(ai::CompleteRequest { prompt: "Where is the key?".into(), ..Default::default() }, &opts())
        .await
        .expect("answered, by a fallback if need be");
    r.served_by.unwrap()
}

#[tokio::test]
async fn requests_fall_back_along_the_chain_and_a_failing_models_circuit_opens_and_half_opens() {
    let fake = FakeOpenAi::start().await;
    let (app, _keys) = with_provider(
        &fake.base_url,
        "model_cache_ms = 1",
        "[domains.ai_router]\nfailure_threshold = 1\nopen_secs = 1\nmodels_cache_ms = 1\n",
    )
    .await;
    let caps = &[mm::Capability::Chat, mm::Capability::Completion];
    register(&app, "primary", "err-401", caps).await;
    register(&app, "backup", "openai", caps).await;
    let models = mm::ModelManagementClient::new(app.client().await);
    models
        .set_default(mm::SetDefaultRequest { capability: mm::Capability::Completion as i32, model_id: "primary".into() }, &opts())
        .await
        .unwrap();
    let client = ai::AiIntegrationClient::new(app.client().await);
    let routes = router::AiRouterClient::new(app.client().await);

    // The router prefers the default; it fails before its first token; the backup answers.
    let s = served(&client).await;
    assert_eq!(s.model_id, "backup");
    assert_eq!(s.failed_model_ids, ["primary"]);
    assert!(!s.decision_id.is_empty());
    let why = routes
        .explain(router::ExplainRequest { target: Some(router::explain_request::Target::DecisionId(s.decision_id.clone())) }, &opts())
        .await
        .unwrap();
    let decision = why.decision.unwrap();
    assert_eq!(decision.model_id, "primary");
    // The request names no player: the configured default profile applies.
    assert!(decision.reason.contains("profile balanced (default)"), "{}", decision.reason);
    assert!(why.candidates.iter().any(|c| c.model_id == "backup" && c.eligible));

    // That failure opened primary's circuit (threshold 1 here): it is skipped, not tried.
    let calls = fake.seen.requests("err-401");
    let s = served(&client).await;
    assert_eq!((s.model_id.as_str(), s.failed_model_ids.len()), ("backup", 0));
    assert_eq!(fake.seen.requests("err-401"), calls, "an open circuit is not called");
    let why = routes
        .explain(router::ExplainRequest { target: Some(router::explain_request::Target::DecisionId(s.decision_id)) }, &opts())
        .await
        .unwrap();
    let primary = why.candidates.iter().find(|c| c.model_id == "primary").unwrap();
    assert_eq!(primary.excluded_reason, "circuit open");
    let stats = routes.stats(router::StatsRequest { model_id: "primary".into(), window: None }, &opts()).await.unwrap();
    assert_eq!(stats.models[0].failures, 1);
    assert_eq!(stats.models[0].circuit, router::CircuitState::Open as i32);

    // The operator fixes the model; after the cool-down one trial closes the circuit.
    models
        .update(
            mm::UpdateRequest {
                model_id: "primary".into(),
                spec: Some(mm::ModelSpec {
                    provider_id: "lan".into(),
                    provider_model: "ollama".into(),
                    capabilities: caps.iter().map(|c| *c as i32).collect(),
                    context_length: 8192,
                    tier: mm::ModelTier::Small as i32,
                    ..Default::default()
                }),
                expected_version: None,
            },
            &opts(),
        )
        .await
        .unwrap();
    let mut state = router::CircuitState::Open as i32;
    for _ in 0..100 {
        let dry = routes
            .explain(
                router::ExplainRequest {
                    target: Some(router::explain_request::Target::Route(router::RouteRequest {
                        capability: router::Capability::Completion as i32,
                        ..Default::default()
                    })),
                },
                &opts(),
            )
            .await
            .unwrap();
        state = dry.candidates.iter().find(|c| c.model_id == "primary").unwrap().circuit;
        if state == router::CircuitState::HalfOpen as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, router::CircuitState::HalfOpen as i32);
    let trial = client
        .complete(
            ai::CompleteRequest { prompt: "Where is the key?".into(), model_id: "primary".into(), ..Default::default() },
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(trial.served_by.unwrap().provider_model, "ollama");
    let mut closed = false;
    for _ in 0..100 {
        let st = routes.stats(router::StatsRequest { model_id: "primary".into(), window: None }, &opts()).await.unwrap();
        if st.models[0].circuit == router::CircuitState::Closed as i32 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "a successful trial closes the circuit");
}
