//! ai-integration on an in-memory store with no NATS client: the offline path end to end
//! (no router and no model-management to ask, so `offline_fallback` applies), input
//! checks, ownership, budgets, records and usage.

use aicore_proto::aicore::ai_integration::v1::*;
use aicore_proto::{Code, Request};
use futures::StreamExt;

use super::*;

fn domain(config: AiIntegrationConfig) -> (AiIntegration, aicore_runtime::Ctx) {
    let (ctx, _) = Ctx::for_tests();
    (AiIntegration::new(ctx.clone(), config).unwrap(), ctx)
}

fn user(text: &str) -> ChatMessage {
    ChatMessage {
        role: Role::User as i32,
        content: text.into(),
    }
}

fn chat_req(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![user(text)],
        ..Default::default()
    }
}

async fn collect(s: aicore_proto::Streaming<ChatResponse>) -> Vec<Result<ChatResponse, Status>> {
    s.collect().await
}

#[tokio::test]
async fn chat_with_no_model_streams_the_offline_answer_and_records_it() {
    let (d, ctx) = domain(Default::default());
    let items = collect(
        d.chat(Request::new(chat_req(
            "Who guards the bridge of Emberfall?",
        )))
        .await
        .unwrap(),
    )
    .await;
    let items: Vec<ChatResponse> = items.into_iter().map(Result::unwrap).collect();
    let Some(chat_response::Item::Started(s)) = &items[0].item else {
        panic!("first item is not `started`: {:?}", items[0]);
    };
    let served = s.served_by.clone().unwrap();
    assert_eq!(
        (served.provider_id.as_str(), served.offline),
        ("offline", true)
    );
    let text: String = items
        .iter()
        .filter_map(|i| match &i.item {
            Some(chat_response::Item::Delta(t)) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert!(text.contains("guards bridge emberfall"), "{text}");
    let Some(chat_response::Item::Summary(sum)) = &items.last().unwrap().item else {
        panic!("last item is not the summary");
    };
    let usage = sum.usage.unwrap();
    assert_eq!(sum.finish_reason, FinishReason::Stop as i32);
    assert!(usage.completion_tokens as usize == items.len() - 2);
    // Deterministic: the same request gives the same text.
    let again: String = d
        .complete(Request::new(CompleteRequest {
            prompt: "Who guards the bridge of Emberfall?".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .text;
    assert_eq!(again, text);
    // Each request left one record in the outbox and counted its tokens for service work.
    let records = ctx
        .store
        .scan(aicore_runtime::outbox::OUTBOX, b"", b"", 100)
        .unwrap();
    let subjects: Vec<String> = records
        .iter()
        .map(|(_, v)| {
            prost::Message::decode(v.clone())
                .map(|e: aicore_runtime::outbox::OutboxEvent| e.subject)
                .unwrap()
        })
        .collect();
    assert_eq!(subjects, vec!["ai.chat.ok", "ai.complete.ok"]);
    let u = d
        .get_usage(Request::new(GetUsageRequest::default()))
        .await
        .unwrap();
    assert_eq!(u.models.len(), 1);
    assert_eq!(
        (u.models[0].model_id.as_str(), u.models[0].requests),
        ("offline", 2)
    );
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_records_nothing() {
    let (d, ctx) = domain(Default::default());
    let cases: Vec<(ChatRequest, &str)> = vec![
        (ChatRequest::default(), "messages"),
        (
            ChatRequest {
                messages: vec![ChatMessage {
                    role: 0,
                    content: "x".into(),
                }],
                ..Default::default()
            },
            "messages[0].role",
        ),
        (
            ChatRequest {
                model_id: "Bad Model".into(),
                ..chat_req("x")
            },
            "model_id",
        ),
        (
            ChatRequest {
                params: Some(GenerationParams {
                    temperature: Some(3.0),
                    ..Default::default()
                }),
                ..chat_req("x")
            },
            "params.temperature",
        ),
        (
            ChatRequest {
                params: Some(GenerationParams {
                    stop: vec![String::new()],
                    ..Default::default()
                }),
                ..chat_req("x")
            },
            "params.stop",
        ),
    ];
    for (req, field) in cases {
        let e = match d.chat(Request::new(req)).await {
            Ok(_) => panic!("{field}: accepted"),
            Err(e) => e,
        };
        assert_eq!(e.code, Code::InvalidArgument, "{field}: {e}");
        assert_eq!(e.field_violations[0].field, field);
    }
    let e = d
        .embed(Request::new(EmbedRequest {
            inputs: vec!["a".into(), String::new()],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "inputs[1]");
    let big = "x".repeat(300 * 1024);
    let e = d
        .complete(Request::new(CompleteRequest {
            prompt: big,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    assert!(
        ctx.store
            .scan(aicore_runtime::outbox::OUTBOX, b"", b"", 10)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_player_acts_only_for_themselves_and_is_held_to_the_hourly_budget() {
    let (d, _) = domain(AiIntegrationConfig {
        player_tokens_per_hour: 30,
        ..Default::default()
    });
    let as_p1 = |r: CompleteRequest| Request::new(r).on_behalf_of("p1", &["player"]);
    let e = d
        .complete(as_p1(CompleteRequest {
            prompt: "hi".into(),
            player_id: "p2".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    // Spend until the budget is gone; the refusal says when to come back.
    let mut refused = None;
    for _ in 0..20 {
        match d
            .complete(as_p1(CompleteRequest {
                prompt: "tell me of the dragon".into(),
                ..Default::default()
            }))
            .await
        {
            Ok(r) => assert!(r.usage.unwrap().total_tokens > 0),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the budget never ran out");
    assert_eq!(e.code, Code::ResourceExhausted);
    assert!(e.retry_after_ms > 0);
    let u = d
        .get_usage(Request::new(GetUsageRequest::default()).on_behalf_of("p1", &["player"]))
        .await
        .unwrap();
    let m = &u.models[0];
    assert!(m.prompt_tokens + m.completion_tokens >= 30);
    // Another player is not affected.
    d.complete(
        Request::new(CompleteRequest {
            prompt: "hi".into(),
            ..Default::default()
        })
        .on_behalf_of("p2", &["player"]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn offline_embeddings_have_the_configured_length() {
    let (d, _) = domain(Default::default());
    let r = d
        .embed(Request::new(EmbedRequest {
            inputs: vec!["red dragon".into(), "blue sea".into()],
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(r.dimensions, 256);
    assert_eq!(r.embeddings.len(), 2);
    assert!(r.served_by.unwrap().offline);
}

#[test]
fn a_key_file_readable_by_others_is_refused_naming_the_field() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "sk-secret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = ProviderConfig {
        id: "hosted".into(),
        base_url: "https://api.example/v1".into(),
        api_key_file: path.display().to_string(),
        ..Default::default()
    };
    let e = api_key(&p).unwrap_err();
    assert!(
        e.contains("api_key_file") && !e.contains("sk-secret"),
        "{e}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(api_key(&p).unwrap().unwrap().0, "sk-secret");
    let bad = AiIntegrationConfig {
        providers: vec![ProviderConfig {
            id: "x".into(),
            base_url: "ftp://x".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = providers(&bad).unwrap_err();
    assert!(e.contains("providers[0].base_url"), "{e}");
}
