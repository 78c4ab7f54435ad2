//! The AI rows (`--only ai`): what the appliance adds to an AI call. A local
//! OpenAI-compatible test server answers every chat completion at once (four content
//! chunks, a `finish_reason` chunk, a usage chunk, `[DONE]`). Two rows take turns with the
//! raw NATS baseline, slice by slice: the server called directly over HTTP (a streamed
//! chat completion read to `[DONE]`, reqwest, keep-alive) and the same chat through the
//! appliance (the SDK's Chat stream over NATS to ai-integration, which asks ai-router for
//! a model — model-management's list, cached — calls the server, reports the outcome to
//! the router and writes the request's record and token counts, read to the summary).
//! The ratio that matters is the appliance's row to the direct row of the same seconds;
//! the added p50/p99 is the difference of their latencies.
//!
//! Then time to the first token, one call at a time: direct (to the first content
//! chunk), over NATS (to the first `delta`) and over the gateway's SSE (an HTTP client to
//! the first `delta` event, through a real gateway with a bearer token checked by a real
//! auth domain), alternating call by call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::http::{gateway, login};
use aicore_domains::ai_integration::ProviderConfig;
use aicore_proto::CallOptions;
use aicore_proto::aicore::ai_integration::v1 as ai;
use aicore_proto::aicore::model_management::v1 as mm;
use aicore_runtime::store::{Store, StoreOptions};

use crate::config::Config;

use super::env::*;
use super::http::serve_http;
use super::load::*;
use super::*;

/// Row names.
pub(super) const AI_DIRECT: &str = "ai: test server direct (HTTP stream)";
pub(super) const AI_APPLIANCE: &str = "ai: chat via ai-integration+router (NATS)";
/// First-token calls per path.
const TTFT_CALLS: usize = 200;

/// The test server's answer: the SSE body of a streamed chat completion.
fn answer() -> Bytes {
    let mut body = String::new();
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    body.push_str(&chunk(r#"{"role":"assistant","content":""}"#, "null"));
    for w in ["The", " gate", " is", " sealed."] {
        body.push_str(&chunk(&format!("{{\"content\":\"{w}\"}}"), "null"));
    }
    body.push_str(&chunk("{}", "\"stop\""));
    body.push_str("data: {\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n");
    body.push_str("data: [DONE]\n\n");
    Bytes::from(body)
}

const CHAT_BODY: &str = r#"{"model":"bench","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"Is the gate open?"}]}"#;

/// One direct streamed call; the time to its first content chunk, after reading to
/// `[DONE]`.
async fn direct(http: &reqwest::Client, url: &str) -> Result<Duration, String> {
    let t0 = Instant::now();
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(CHAT_BODY)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        if first.is_none() && memchr(&seen, b"\"content\":\"T") {
            first = Some(t0.elapsed());
        }
    }
    if !memchr(&seen, b"[DONE]") {
        return Err("no [DONE]".into());
    }
    first.ok_or_else(|| "no content".into())
}

fn memchr(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn chat_request() -> ai::ChatRequest {
    ai::ChatRequest {
        messages: vec![ai::ChatMessage {
            role: ai::Role::User as i32,
            content: "Is the gate open?".into(),
        }],
        params: Some(ai::GenerationParams {
            max_tokens: 16,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One chat through the appliance over NATS; the time to its first delta, after reading
/// to the summary.
async fn via_appliance(
    client: &ai::AiIntegrationClient<aicore_sdk::Client>,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut s = client
        .chat(chat_request(), &CallOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut first = None;
    let mut summary = false;
    while let Some(item) = s.next().await {
        match item.map_err(|e| e.to_string())?.item {
            Some(ai::chat_response::Item::Delta(_)) if first.is_none() => {
                first = Some(t0.elapsed())
            }
            Some(ai::chat_response::Item::Summary(_)) => summary = true,
            _ => {}
        }
    }
    if !summary {
        return Err("no summary".into());
    }
    first.ok_or_else(|| "no delta".into())
}

/// One chat over the gateway's SSE; the time to the first `delta` event, after reading
/// to the `end` event.
async fn via_sse(http: &reqwest::Client, url: &str, bearer: &str) -> Result<Duration, String> {
    let t0 = Instant::now();
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", bearer)
        .body(r#"{"messages":[{"role":"ROLE_USER","content":"Is the gate open?"}],"params":{"maxTokens":16}}"#)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("HTTP {}", r.status()));
    }
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        if first.is_none() && memchr(&seen, b"\"delta\"") {
            first = Some(t0.elapsed());
        }
    }
    if !memchr(&seen, b"event: end") {
        return Err("no end event".into());
    }
    first.ok_or_else(|| "no delta".into())
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Measures the AI rows and prints the time-to-first-token comparison.
pub(super) async fn measure_ai(
    env: &Env,
    config: &Config,
    base: &Baseline,
    args: &BenchArgs,
    dir: &std::path::Path,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    let base_url = start_provider(&stop).await?;
    let direct_url: Arc<str> = format!("{base_url}/chat/completions").into();

    // The AI domains on their own store, with the server as provider `bench`.
    let mut config = config.clone();
    config.domains.ai_integration.providers = vec![ProviderConfig {
        id: "bench".into(),
        base_url: base_url.clone(),
        max_concurrent: 256,
        ..Default::default()
    }];
    let store = Store::open(&dir.join("bench-ai.redb"), StoreOptions::default())?;
    let mut serving = Vec::new();
    for d in ["ai_integration", "model_management", "ai_router", "auth"] {
        serving.push(serve_domain(env, d, store.clone(), &config, stop.child_token()).await?);
    }
    let sdk = aicore_sdk::Client::new(base.nats.clone(), Default::default());
    register_model(&sdk).await?;
    let client = ai::AiIntegrationClient::new(sdk.clone());
    check_first_chat(&client).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;

    let mut cells = Vec::new();
    for &c in &args.concurrency {
        let rows = ai_rows(&http, &direct_url, &client);
        cells.extend(measure_rows(base, Some(&store), c, args.seconds, rows).await);
    }

    // Time to the first token, one call at a time, the paths alternating.
    let bearer = login(&sdk, "bench-ai").await?;
    let gateway = gateway(env, &config, &stop, &["auth", "ai_integration"]).await?;
    let gw = serve_http(gateway, stop.child_token()).await?;
    let sse_url = format!("http://{gw}/v1/ai_integration/chat");
    let (mut d, mut n, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TTFT_CALLS {
        d.push(
            direct(&http, &direct_url)
                .await
                .map_err(anyhow::Error::msg)?,
        );
        n.push(via_appliance(&client).await.map_err(anyhow::Error::msg)?);
        s.push(
            via_sse(&http, &sse_url, &bearer)
                .await
                .map_err(anyhow::Error::msg)?,
        );
    }
    print_ttft(env.label, &mut d, &mut n, &mut s);
    for s in serving {
        s.stop().await;
    }
    store.close().await;
    Ok(cells)
}

/// The two AI rows: the test server called directly, and the same chat through the
/// appliance.
fn ai_rows(
    http: &reqwest::Client,
    direct_url: &Arc<str>,
    client: &ai::AiIntegrationClient<aicore_sdk::Client>,
) -> Vec<(&'static str, Op)> {
    let (h, url) = (http.clone(), direct_url.clone());
    let direct_op = op(move |_, _| {
        let (h, url) = (h.clone(), url.clone());
        async move { direct(&h, &url).await.map(|_| ()) }
    });
    let cl = client.clone();
    let appliance_op = op(move |_, _| {
        let cl = cl.clone();
        async move { via_appliance(&cl).await.map(|_| ()) }
    });
    vec![(AI_DIRECT, direct_op), (AI_APPLIANCE, appliance_op)]
}

/// Starts the test server (every answer at once) until `stop`; returns its base URL.
async fn start_provider(stop: &CancellationToken) -> Result<String> {
    let body = answer();
    let server = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let body = body.clone();
            async move { ([("content-type", "text/event-stream")], body).into_response() }
        }),
    );
    let addr = serve_http(server, stop.child_token()).await?;
    Ok(format!("http://{addr}/v1"))
}

/// Registers the test server's model `bench-chat` with model-management.
async fn register_model(sdk: &aicore_sdk::Client) -> Result<()> {
    let models = mm::ModelManagementClient::new(sdk.clone());
    let options = CallOptions::default();
    ready("registering the bench model", || {
        models.register(
            mm::RegisterRequest {
                model_id: "bench-chat".into(),
                spec: Some(mm::ModelSpec {
                    provider_id: "bench".into(),
                    provider_model: "bench".into(),
                    capabilities: vec![mm::Capability::Chat as i32],
                    context_length: 8192,
                    tier: mm::ModelTier::Small as i32,
                    ..Default::default()
                }),
            },
            &options,
        )
    })
    .await
}

/// One chat through the appliance, which must be served by the bench model.
async fn check_first_chat(client: &ai::AiIntegrationClient<aicore_sdk::Client>) -> Result<()> {
    let served = client
        .chat(chat_request(), &CallOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("the first chat: {e}"))?;
    let first: Vec<_> = served.collect().await;
    match first.first() {
        Some(Ok(ai::ChatResponse {
            item: Some(ai::chat_response::Item::Started(s)),
        })) if s
            .served_by
            .as_ref()
            .is_some_and(|b| b.model_id == "bench-chat") => {}
        other => anyhow::bail!("the bench chat was not served by the bench model: {other:?}"),
    }
    Ok(())
}

/// Prints the time to the first token of each path (`d` direct, `n` NATS chat, `s`
/// gateway SSE) and what the appliance's paths add to the direct one.
fn print_ttft(label: &str, d: &mut [Duration], n: &mut [Duration], s: &mut [Duration]) {
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!("AI time to first token ({TTFT_CALLS} calls each, one at a time, {label}):");
    for (name, v) in [
        ("direct", &mut *d),
        ("NATS chat", &mut *n),
        ("gateway SSE", &mut *s),
    ] {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!("  {name:12} p50 {:.3} ms  p99 {:.3} ms", ms(p50), ms(p99));
    }
    let (dp50, dp99) = (percentile(d, 0.5), percentile(d, 0.99));
    for (name, v) in [("NATS chat", n), ("gateway SSE", s)] {
        println!(
            "  added by {name}: p50 +{:.3} ms, p99 +{:.3} ms",
            ms(percentile(v, 0.5)) - ms(dp50),
            ms(percentile(v, 0.99)) - ms(dp99)
        );
    }
}

/// The appliance's AI throughput as a share of the direct calls, and the latency it adds,
/// per concurrency.
pub(super) fn print_ai_ratios(cells: &[Cell], args: &BenchArgs) {
    let cell = |name: &str, c: usize| cells.iter().find(|x| x.name == name && x.concurrency == c);
    for &c in &args.concurrency {
        if let (Some(a), Some(d)) = (cell(AI_APPLIANCE, c), cell(AI_DIRECT, c))
            && d.rps > 0.0
        {
            println!(
                "ai chat via the appliance vs direct at C={c}: {:.0}% of the throughput, p50 +{:.3} ms, p99 +{:.3} ms",
                100.0 * a.rps / d.rps,
                (a.p50.as_secs_f64() - d.p50.as_secs_f64()) * 1000.0,
                (a.p99.as_secs_f64() - d.p99.as_secs_f64()) * 1000.0
            );
        }
    }
}
