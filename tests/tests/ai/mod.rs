//! The AI domains on a real appliance: with no model configured every AI feature works
//! through the offline provider — over NATS (Chat streamed, Complete, Embed), over the
//! gateway as Server-Sent Events, recorded on the `AI` stream.

use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::CallOptions;
use aicore_proto::aicore::ai_integration::v1 as ai;
use futures::StreamExt;

use crate::gateway::http::Http;

pub(crate) fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(20))
}

pub(crate) fn chat(text: &str) -> ai::ChatRequest {
    ai::ChatRequest {
        messages: vec![ai::ChatMessage {
            role: ai::Role::User as i32,
            content: text.into(),
        }],
        ..Default::default()
    }
}

/// Registers and logs in a player over HTTP; returns the access token.
pub(crate) async fn player_token(http: &Http, name: &str) -> String {
    let body = format!(r#"{{"username":"{name}","password":"violet-otter-lantern"}}"#);
    assert_eq!(http.post("/v1/auth/register", &body, &[]).await.status, 200);
    let r = http.post("/v1/auth/login", &body, &[]).await;
    r.json()["accessToken"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn with_no_model_the_offline_provider_answers_over_nats_and_sse_and_is_recorded() {
    let app = Appliance::start().await;
    let client = ai::AiIntegrationClient::new(app.client().await);

    // Chat over NATS: `started` (offline), deltas, one summary, then the end.
    let mut s = client
        .chat(chat("What lies beneath the Ashen Keep?"), &opts())
        .await
        .expect("chat starts");
    let mut items = Vec::new();
    while let Some(i) = s.next().await {
        items.push(i.expect("no error item").item.expect("an item"));
    }
    let ai::chat_response::Item::Started(started) = &items[0] else {
        panic!("{:?}", items[0]);
    };
    let served = started.served_by.clone().unwrap();
    assert!(served.offline, "{served:?}");
    assert_eq!(served.provider_id, "offline");
    let text: String = items
        .iter()
        .filter_map(|i| match i {
            ai::chat_response::Item::Delta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert!(text.contains("lies beneath ashen keep"), "{text}");
    assert!(matches!(items.last(), Some(ai::chat_response::Item::Summary(_))));

    let done = client
        .complete(
            ai::CompleteRequest {
                prompt: "What lies beneath the Ashen Keep?".into(),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(done.text, text, "the offline provider is deterministic");
    let e = client
        .embed(
            ai::EmbedRequest {
                inputs: vec!["ash".into(), "keep".into()],
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap();
    assert_eq!(e.embeddings.len(), 2);

    // Over HTTP, as a player: Server-Sent Events, then `end`.
    let http = Http::new(&app.http_url);
    let token = player_token(&http, "ilse").await;
    let bearer = format!("Bearer {token}");
    let body = r#"{"messages":[{"role":"ROLE_USER","content":"Who rules the salt marshes?"}]}"#;
    let (status, _, mut events) = http
        .stream("/v1/ai_integration/chat", body, &[("authorization", &bearer)])
        .await;
    assert_eq!(status, 200);
    let first = events.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.json()["started"]["servedBy"]["providerId"], "offline");
    let mut sse_text = String::new();
    let mut summary = None;
    loop {
        let e = events.next(Duration::from_secs(10)).await.expect("an event");
        match e.event.as_str() {
            "message" if e.json().get("delta").is_some() => {
                sse_text.push_str(e.json()["delta"].as_str().unwrap())
            }
            "message" => summary = Some(e.json()),
            "end" => break,
            other => panic!("{other}: {}", e.data),
        }
    }
    assert!(sse_text.contains("rules salt marshes"), "{sse_text}");
    assert_eq!(summary.unwrap()["summary"]["finishReason"], "FINISH_REASON_STOP");
    // A player reads their own usage, not another's.
    let r = http.call("/v1/ai_integration/get_usage", "{}", &token).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["models"][0]["requests"], "1");
    let r = http
        .call("/v1/ai_integration/get_usage", r#"{"playerId":"someone-else"}"#, &token)
        .await;
    assert_eq!(r.status, 403);

    // Every request left a record on the AI stream.
    use async_nats::jetstream;
    let js = jetstream::new(app.nats().await);
    let mut subjects = Vec::new();
    for _ in 0..100 {
        let mut stream = js.get_stream("AI").await.unwrap();
        let info = stream.info().await.unwrap();
        if info.state.messages >= 4 {
            for seq in 1..=info.state.messages {
                subjects.push(stream.get_raw_message(seq).await.unwrap().subject.to_string());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    subjects.sort();
    assert_eq!(subjects, ["ai.chat.ok", "ai.chat.ok", "ai.complete.ok", "ai.embed.ok"]);
}

mod knowledge;
mod providers;
mod routing;

/// An appliance whose ai-integration has one OpenAI-compatible provider `lan` (the test
/// server at `base_url`, its key in a 0600 file), with `extra` appended to its
/// `[domains.ai_integration]` section and `more` after it.
pub(crate) async fn with_provider(base_url: &str, extra: &str, more: &str) -> (Appliance, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("lan.key");
    std::fs::write(&key, "sk-test-key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let toml = format!(
        "[domains.ai_integration]\nretry_base_ms = 10\nretry_max_ms = 50\n{extra}\n\n\
         [[domains.ai_integration.providers]]\nid = \"lan\"\nbase_url = \"{base_url}\"\n\
         api_key_file = \"{}\"\n\n{more}\n",
        key.display()
    );
    (Appliance::start_with_config(&toml).await, keys)
}

/// Registers model `id` served by provider `lan` as `provider_model`.
pub(crate) async fn register(
    app: &Appliance,
    id: &str,
    provider_model: &str,
    caps: &[aicore_proto::aicore::model_management::v1::Capability],
) {
    use aicore_proto::aicore::model_management::v1 as mm;
    mm::ModelManagementClient::new(app.client().await)
        .register(
            mm::RegisterRequest {
                model_id: id.into(),
                spec: Some(mm::ModelSpec {
                    provider_id: "lan".into(),
                    provider_model: provider_model.into(),
                    capabilities: caps.iter().map(|c| *c as i32).collect(),
                    context_length: 8192,
                    tier: mm::ModelTier::Small as i32,
                    ..Default::default()
                }),
            },
            &opts(),
        )
        .await
        .unwrap_or_else(|e| panic!("registering {id}: {e}"));
}

/// Waits (bounded) until `f` holds.
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}
