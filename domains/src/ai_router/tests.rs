//! ai-router with model-management's list put in its cache (no NATS) and a manual clock:
//! choice by score and the fallback chain, exclusions by tier, context, budget and
//! circuit, the circuit opening and half-opening, de-duplicated reports, statistics.

use std::time::Duration;

use aicore_proto::aicore::ai_router::v1::*;
use aicore_proto::aicore::model_management::v1 as mm;
use aicore_proto::{Code, Request};

use super::*;

fn model(
    id: &str,
    provider: &str,
    tier: mm::ModelTier,
    latency_ms: u64,
    context: u32,
) -> mm::Model {
    mm::Model {
        model_id: id.into(),
        spec: Some(mm::ModelSpec {
            provider_id: provider.into(),
            capabilities: vec![mm::Capability::Chat as i32],
            context_length: context,
            tier: tier as i32,
            ..Default::default()
        }),
        status: mm::ModelStatus::Ready as i32,
        last_latency: prost_types::Duration::try_from(Duration::from_millis(latency_ms)).ok(),
        ..Default::default()
    }
}

fn router() -> (AiRouter, Arc<aicore_runtime::ManualClock>) {
    let (ctx, clock) = Ctx::for_tests();
    let r = AiRouter::new(
        ctx,
        AiRouterConfig {
            models_cache_ms: 3_600_000,
            ..Default::default()
        },
    );
    r.models.insert(
        Capability::Chat as i32,
        Arc::new(vec![
            model("fast", "ollama", mm::ModelTier::Medium, 50, 8192),
            model("slow", "vllm", mm::ModelTier::Medium, 900, 32768),
            model("big", "vllm", mm::ModelTier::Large, 100, 131072),
            model("offline", "offline", mm::ModelTier::Small, 0, 0),
        ]),
    );
    (r, clock)
}

fn chat() -> RouteRequest {
    RouteRequest {
        capability: Capability::Chat as i32,
        ..Default::default()
    }
}

async fn report(r: &AiRouter, decision: &str, model: &str, success: bool) -> i32 {
    r.report_outcome(Request::new(ReportOutcomeRequest {
        decision_id: decision.into(),
        model_id: model.into(),
        success,
        latency: prost_types::Duration::try_from(Duration::from_millis(40)).ok(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .circuit
}

#[tokio::test]
async fn the_best_eligible_model_wins_and_the_rest_form_the_fallback_chain_offline_last() {
    let (r, _) = router();
    let d = r.route(Request::new(chat())).await.unwrap();
    assert_eq!(d.model_id, "fast");
    assert_eq!(d.fallback_model_ids, ["slow", "offline"]);
    let e = r
        .explain(Request::new(ExplainRequest {
            target: Some(explain_request::Target::DecisionId(d.decision_id.clone())),
        }))
        .await
        .unwrap();
    let by_id = |id: &str| {
        e.candidates
            .iter()
            .find(|c| c.model_id == id)
            .unwrap()
            .clone()
    };
    assert!(by_id("fast").score > by_id("slow").score);
    assert_eq!(by_id("big").excluded_reason, "tier above profile balanced");
    assert!(
        by_id("offline")
            .score_factors
            .iter()
            .any(|f| f.contains("last resort"))
    );
    // The order: eligible best first, then the excluded.
    let order: Vec<&str> = e.candidates.iter().map(|c| c.model_id.as_str()).collect();
    assert_eq!(order, ["fast", "slow", "offline", "big"]);

    // A profile allowing large models, a tight context need and a latency budget.
    let q = r
        .route(Request::new(RouteRequest {
            profile: "quality".into(),
            ..chat()
        }))
        .await
        .unwrap();
    assert_eq!(q.model_id, "big");
    let ctx_need = r
        .route(Request::new(RouteRequest {
            required_context: 16_000,
            ..chat()
        }))
        .await
        .unwrap();
    assert_eq!(ctx_need.model_id, "slow", "fast's 8192 tokens are too few");
    let budget = r
        .explain(Request::new(ExplainRequest {
            target: Some(explain_request::Target::Route(RouteRequest {
                latency_budget: prost_types::Duration::try_from(Duration::from_millis(500)).ok(),
                exclude_model_ids: vec!["fast".into()],
                ..chat()
            })),
        }))
        .await
        .unwrap();
    assert_eq!(budget.decision.unwrap().model_id, "offline");
    let slow = budget
        .candidates
        .iter()
        .find(|c| c.model_id == "slow")
        .unwrap();
    assert!(
        slow.excluded_reason.starts_with("over latency budget"),
        "{slow:?}"
    );
    let e = r
        .route(Request::new(RouteRequest {
            profile: "turbo".into(),
            ..chat()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::InvalidArgument, "profile")
    );
    let e = r
        .route(Request::new(RouteRequest {
            capability: 0,
            ..chat()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "capability");
}

#[tokio::test]
async fn failures_open_a_models_circuit_until_a_half_open_trial_succeeds() {
    let (r, clock) = router();
    let d = r.route(Request::new(chat())).await.unwrap();
    assert_eq!(d.model_id, "fast");
    // Failures of calls made straight to the model (no decision) count too.
    report(&r, &d.decision_id, "fast", false).await;
    report(&r, "", "fast", false).await;
    assert_eq!(
        report(&r, "", "fast", false).await,
        CircuitState::Open as i32
    );
    let d = r.route(Request::new(chat())).await.unwrap();
    assert_eq!(d.model_id, "slow", "fast's circuit is open");
    let e = r
        .explain(Request::new(ExplainRequest {
            target: Some(explain_request::Target::DecisionId(d.decision_id)),
        }))
        .await
        .unwrap();
    let fast = e.candidates.iter().find(|c| c.model_id == "fast").unwrap();
    assert_eq!(
        (fast.excluded_reason.as_str(), fast.circuit),
        ("circuit open", CircuitState::Open as i32)
    );
    let stats = r
        .stats(Request::new(StatsRequest {
            model_id: "fast".into(),
            window: None,
        }))
        .await
        .unwrap();
    assert_eq!(stats.models[0].failures, 3);
    assert!(stats.models[0].circuit_retry_at.is_some());

    // After the cool-down the circuit half-opens: fast may be tried (once at a time).
    clock.advance(Duration::from_secs(30));
    let e = r
        .explain(Request::new(ExplainRequest {
            target: Some(explain_request::Target::Route(RouteRequest {
                exclude_model_ids: vec!["slow".into()],
                ..chat()
            })),
        }))
        .await
        .unwrap();
    let fast = e
        .candidates
        .iter()
        .find(|c| c.model_id == "fast")
        .unwrap()
        .clone();
    assert!(fast.eligible);
    assert_eq!(fast.circuit, CircuitState::HalfOpen as i32);
    let trial = r
        .route(Request::new(RouteRequest {
            exclude_model_ids: vec!["slow".into()],
            ..chat()
        }))
        .await
        .unwrap();
    assert_eq!(trial.model_id, "fast");
    let again = r
        .route(Request::new(RouteRequest {
            exclude_model_ids: vec!["slow".into()],
            ..chat()
        }))
        .await
        .unwrap();
    assert_eq!(again.model_id, "offline", "one trial at a time");
    assert_eq!(
        report(&r, &trial.decision_id, "fast", true).await,
        CircuitState::Closed as i32
    );
    // Closed again; its error rate decays with time, and it wins again.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        r.route(Request::new(chat())).await.unwrap().model_id,
        "fast"
    );
}

#[tokio::test]
async fn a_repeated_report_for_one_decision_counts_once() {
    let (r, _) = router();
    let d = r.route(Request::new(chat())).await.unwrap();
    for _ in 0..5 {
        report(&r, &d.decision_id, "fast", false).await;
    }
    let stats = r
        .stats(Request::new(StatsRequest {
            model_id: "fast".into(),
            window: None,
        }))
        .await
        .unwrap();
    assert_eq!((stats.models[0].failures, stats.models[0].routed), (1, 1));
    assert_eq!(stats.models[0].circuit, CircuitState::Closed as i32);
}

#[tokio::test]
async fn no_eligible_model_is_failed_precondition_listing_why() {
    let (r, _) = router();
    let e = r
        .route(Request::new(RouteRequest {
            exclude_model_ids: vec!["fast".into(), "slow".into(), "offline".into()],
            ..chat()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition);
    assert!(
        e.message.contains("big: tier above profile balanced"),
        "{}",
        e.message
    );
}
