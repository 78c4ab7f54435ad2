//! The OpenAI-compatible provider against the test server (`aicore_e2e::openai`), through
//! a real appliance: each server's chunk shapes, usage in the last chunk or not at all,
//! each error body becoming its own status naming the provider, a stream cut mid-way and
//! a chunk that is not JSON as errors, a first token that never comes, cancellation that
//! reaches the server (over NATS and over the gateway's SSE), the key sent, the cache,
//! ListProviders and Probe.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aicore_e2e::openai::{FakeOpenAi, PIECES, USAGE};
use aicore_proto::aicore::ai_integration::v1 as ai;
use aicore_proto::aicore::model_management::v1 as mm;
use aicore_proto::{CallOptions, Code};
use futures::StreamExt;

use super::{chat, eventually, opts, register, with_provider};
use crate::gateway::http::Http;

const CHAT: &[mm::Capability] = &[mm::Capability::Chat, mm::Capability::Completion];

fn complete(model: &str) -> ai::CompleteRequest {
    ai::CompleteRequest {
        prompt: "Is the gate open?".into(),
        model_id: model.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn openai_compatible_servers_wire_formats_errors_and_cancellation() {
    let fake = FakeOpenAi::start().await;
    let (app, _keys) = with_provider(&fake.base_url, "first_token_timeout_ms = 1500", "").await;
    let models = [
        "openai", "ollama", "llamacpp", "vllm", "plain", "cut", "garbage", "stall", "endless",
        "err-400", "err-401", "err-404", "err-429", "err-503",
    ];
    for m in models {
        register(&app, &format!("m-{m}"), m, CHAT).await;
    }
    let client = ai::AiIntegrationClient::new(app.client().await);

    // Each server's shapes give the same answer and its reported usage.
    for m in ["openai", "ollama", "llamacpp", "vllm"] {
        let r = client.complete(complete(&format!("m-{m}")), &opts()).await;
        let r = r.unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(r.text, PIECES.concat(), "{m}");
        let u = r.usage.unwrap();
        assert_eq!(
            (u64::from(u.prompt_tokens), u64::from(u.completion_tokens), u.estimated),
            (USAGE.0, USAGE.1, false),
            "{m}"
        );
        let served = r.served_by.unwrap();
        assert_eq!((served.provider_id.as_str(), served.provider_model.as_str()), ("lan", m));
        assert!(!served.offline);
    }
    // No usage at all: estimated, and said so.
    let r = client.complete(complete("m-plain"), &opts()).await.unwrap();
    assert!(r.usage.unwrap().estimated);
    // The key went in the Authorization header.
    assert!(fake.seen.authorizations.lock().unwrap().iter().all(|a| a == "Bearer sk-test-key"));

    // Errors: one status each, naming the provider; 503 retried, 400/401/404 not.
    let cases = [
        ("err-400", Code::InvalidArgument, "maximum context length"),
        ("err-401", Code::FailedPrecondition, "Incorrect API key"),
        ("err-404", Code::InvalidArgument, "not found"),
        ("err-429", Code::ResourceExhausted, "Rate limit"),
        ("err-503", Code::Unavailable, "Loading model"),
        ("garbage", Code::Internal, "not JSON"),
        ("stall", Code::DeadlineExceeded, "first token"),
    ];
    for (m, code, text) in cases {
        let e = client.complete(complete(&format!("m-{m}")), &opts()).await.unwrap_err();
        assert_eq!(e.code, code, "{m}: {e}");
        assert!(e.message.contains("provider lan") && e.message.contains(text), "{m}: {e}");
    }
    assert_eq!(fake.seen.requests("err-503"), 3, "the first call and two retries");
    // 429 with Retry-After: 1 is retried after that second; a second wait would pass the
    // first-token bound (1.5 s here), so the 429 is answered then.
    assert_eq!(fake.seen.requests("err-429"), 2);
    assert_eq!(fake.seen.requests("err-401"), 1);
    let e = client.complete(complete("m-err-429"), &opts()).await.unwrap_err();
    assert!(e.retry_after_ms >= 1000, "Retry-After is passed on: {e:?}");
    // The stalled stream's connection was closed when the first-token bound passed.
    eventually("the stalled stream is abandoned", || fake.seen.abandoned.load(Ordering::SeqCst) >= 1).await;

    // A stream cut mid-way is an error after the text so far, not a short answer.
    let mut s = client.chat(ai::ChatRequest { model_id: "m-cut".into(), ..chat("Is the gate open?") }, &opts()).await.unwrap();
    let mut got = Vec::new();
    let end = loop {
        match s.next().await {
            Some(Ok(i)) => got.push(i),
            Some(Err(e)) => break e,
            None => panic!("the cut stream ended as if complete: {got:?}"),
        }
    };
    assert_eq!(end.code, Code::Internal, "{end}");
    assert!(end.message.contains("[DONE]"), "{end}");
    assert!(got.iter().any(|i| matches!(i.item, Some(ai::chat_response::Item::Delta(_)))));

    // Cancellation over NATS: dropping the stream closes the provider's connection, and
    // the request is recorded as cancelled with the tokens generated so far.
    let before = fake.seen.abandoned.load(Ordering::SeqCst);
    let mut s = client
        .chat(ai::ChatRequest { model_id: "m-endless".into(), ..chat("Talk forever") }, &CallOptions::timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    for _ in 0..4 {
        s.next().await.unwrap().unwrap();
    }
    drop(s);
    eventually("the NATS caller's cancel reaches the provider", || {
        fake.seen.abandoned.load(Ordering::SeqCst) > before
    })
    .await;
    let usage = client
        .get_usage(ai::GetUsageRequest { model_id: "m-endless".into(), ..Default::default() }, &opts())
        .await
        .unwrap();
    let mut counted = usage.models.first().map_or(0, |m| m.completion_tokens);
    for _ in 0..100 {
        if counted > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let u = client
            .get_usage(ai::GetUsageRequest { model_id: "m-endless".into(), ..Default::default() }, &opts())
            .await
            .unwrap();
        counted = u.models.first().map_or(0, |m| m.completion_tokens);
    }
    assert!(counted > 0, "a cancelled generation's tokens are counted");

    // And over the gateway's SSE: the client goes away, so does the upstream request.
    let http = Http::new(&app.http_url);
    let token = super::player_token(&http, "arno").await;
    let bearer = format!("Bearer {token}");
    let before = fake.seen.abandoned.load(Ordering::SeqCst);
    let (status, _, mut events) = http
        .stream(
            "/v1/ai_integration/chat",
            r#"{"modelId":"m-endless","messages":[{"role":"ROLE_USER","content":"Talk forever"}]}"#,
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..4 {
        events.next(Duration::from_secs(10)).await.expect("an event");
    }
    drop(events);
    eventually("the SSE client's departure reaches the provider", || {
        fake.seen.abandoned.load(Ordering::SeqCst) > before
    })
    .await;

    // A deterministic request is answered from the cache the second time.
    let det = ai::CompleteRequest {
        params: Some(ai::GenerationParams { temperature: Some(0.0), ..Default::default() }),
        ..complete("m-openai")
    };
    let n = fake.seen.requests("openai");
    let first = client.complete(det.clone(), &opts()).await.unwrap();
    let second = client.complete(det, &opts()).await.unwrap();
    assert!(!first.served_by.unwrap().cached);
    assert!(second.served_by.unwrap().cached);
    assert_eq!(second.text, first.text);
    assert_eq!(fake.seen.requests("openai"), n + 1);

    // Embeddings through the provider.
    register(&app, "e-lan", "embedder", &[mm::Capability::Embedding]).await;
    let e = client
        .embed(ai::EmbedRequest { inputs: vec!["a b".into(), "c".into()], model_id: "e-lan".into(), ..Default::default() }, &opts())
        .await
        .unwrap();
    assert_eq!((e.dimensions, e.embeddings[0].values[1]), (4, 2.0));

    // Operators see the provider's health and probe models.
    let p = client.list_providers(ai::ListProvidersRequest::default(), &opts()).await.unwrap();
    let lan = p.providers.iter().find(|p| p.provider_id == "lan").unwrap();
    assert!(lan.healthy && lan.has_api_key, "{lan:?}");
    let models = mm::ModelManagementClient::new(app.client().await);
    let ok = models.probe(mm::ProbeRequest { model_id: "m-openai".into() }, &opts()).await.unwrap();
    assert!(ok.ok);
    assert_eq!(ok.status, mm::ModelStatus::Ready as i32);
    let bad = models.probe(mm::ProbeRequest { model_id: "m-err-401".into() }, &opts()).await.unwrap();
    assert!(!bad.ok && bad.error.contains("provider lan"), "{bad:?}");
    let m = models.get(mm::GetRequest { model_id: "m-err-401".into() }, &opts()).await.unwrap().model.unwrap();
    assert_eq!(m.status, mm::ModelStatus::Unavailable as i32);
    assert!(m.last_probed_at.is_some());
}
