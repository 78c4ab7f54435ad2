//! A test OpenAI-compatible server: real HTTP on loopback, in the test process, replaying
//! the wire formats real servers send, chosen by the request's `model`:
//!
//! | model | what it sends |
//! |---|---|
//! | `openai` | OpenAI's chunks: a role chunk, content chunks, a `finish_reason` chunk, then (when asked with `stream_options.include_usage`) a chunk with `choices: []` and `usage`, then `[DONE]` |
//! | `ollama` | Ollama's `/v1` chunks (`system_fingerprint: fp_ollama`, role in every delta, an empty final delta with `finish_reason`), usage chunk when asked, `[DONE]` |
//! | `llamacpp` | llama.cpp server chunks (`content: null` role chunk, `usage` and `timings` inside the `finish_reason` chunk), `[DONE]` |
//! | `vllm` | vLLM chunks (`logprobs: null`, `stop_reason`, an empty content chunk with `finish_reason`), usage chunk with `choices: []` when asked, `[DONE]` |
//! | `plain` | OpenAI's chunks but never any usage |
//! | `cut` | two content chunks, then the body ends: no `finish_reason`, no `[DONE]` |
//! | `garbage` | a chunk that is not JSON |
//! | `stall` | headers, then nothing until the client goes away |
//! | `endless` | a content chunk every 20 ms until the client goes away |
//! | `err-400` / `err-401` / `err-404` / `err-429` / `err-503` | vLLM's 400, OpenAI's 401, Ollama's 404, OpenAI's 429 (with `Retry-After: 1`), llama.cpp's 503 "Loading model" |
//!
//! The shapes follow the servers' public documentation and source: OpenAI's chat
//! streaming reference, Ollama's OpenAI compatibility (`openai/openai.go`), llama.cpp's
//! `tools/server` and vLLM's `entrypoints/openai/protocol.py`. `/v1/embeddings` returns
//! small deterministic vectors (`stall`: no answer), `/v1/models` a list. The server counts requests per
//! model, streams finished, and streams whose client went away before the end — what the
//! tests check cancellation with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

/// The answer every scenario that answers gives, in these pieces.
pub const PIECES: [&str; 4] = ["The gate", " is", " sealed", "."];
/// Prompt and completion tokens the scenarios report.
pub const USAGE: (u64, u64) = (9, 4);

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    requests: Mutex<HashMap<String, usize>>,
    /// Streams sent to the end.
    pub finished: AtomicUsize,
    /// Streams whose client went away before the end.
    pub abandoned: AtomicUsize,
    /// `Authorization` headers received.
    pub authorizations: Mutex<Vec<String>>,
}

impl Seen {
    /// Chat and embedding requests for `model` so far.
    pub fn requests(&self, model: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(model)
            .copied()
            .unwrap_or(0)
    }
}

/// A running test server; stops when dropped.
pub struct FakeOpenAi {
    /// Base URL including `/v1`.
    pub base_url: String,
    /// What it saw.
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOpenAi {
    /// Starts one on a free loopback port.
    pub async fn start() -> FakeOpenAi {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOpenAi {
            base_url: format!("http://{addr}/v1"),
            seen,
            task,
        }
    }
}

fn count(seen: &Seen, model: &str, headers: &HeaderMap) {
    *seen
        .requests
        .lock()
        .unwrap()
        .entry(model.to_string())
        .or_default() += 1;
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        seen.authorizations
            .lock()
            .unwrap()
            .push(a.to_str().unwrap_or_default().to_string());
    }
}

fn error(status: u16, body: Value, retry_after: Option<&str>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(after) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, after.parse().unwrap());
    }
    r
}

/// The SSE events (each a `data:` payload) of a scenario that answers.
fn events(model: &str, with_usage: bool) -> Vec<String> {
    let (p, c) = USAGE;
    let usage = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
    let id = "chatcmpl-7a3f";
    let mut out: Vec<Value> = Vec::new();
    match model {
        "ollama" => {
            for piece in PIECES {
                out.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1722000000, "model": "llama3.1:8b", "system_fingerprint": "fp_ollama",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": null}]}));
            }
            out.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1722000000, "model": "llama3.1:8b", "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}));
            if with_usage {
                out.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1722000000, "model": "llama3.1:8b", "system_fingerprint": "fp_ollama",
                    "choices": [], "usage": usage}));
            }
        }
        "llamacpp" => {
            out.push(json!({"choices": [{"finish_reason": null, "index": 0, "delta": {"role": "assistant", "content": null}}],
                "created": 1739000000, "id": id, "model": "gguf", "system_fingerprint": "b4600-2b6b55a5", "object": "chat.completion.chunk"}));
            for piece in PIECES {
                out.push(json!({"choices": [{"finish_reason": null, "index": 0, "delta": {"content": piece}}],
                    "created": 1739000000, "id": id, "model": "gguf", "system_fingerprint": "b4600-2b6b55a5", "object": "chat.completion.chunk"}));
            }
            out.push(json!({"choices": [{"finish_reason": "stop", "index": 0, "delta": {}}],
                "created": 1739000000, "id": id, "model": "gguf", "system_fingerprint": "b4600-2b6b55a5", "object": "chat.completion.chunk",
                "usage": usage, "timings": {"prompt_n": p, "prompt_ms": 12.5, "predicted_n": c, "predicted_ms": 30.1}}));
        }
        "vllm" => {
            out.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1730000000, "model": "Qwen/Qwen2.5-7B-Instruct",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]}));
            for piece in PIECES {
                out.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1730000000, "model": "Qwen/Qwen2.5-7B-Instruct",
                    "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": null, "finish_reason": null}]}));
            }
            out.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1730000000, "model": "Qwen/Qwen2.5-7B-Instruct",
                "choices": [{"index": 0, "delta": {"content": ""}, "logprobs": null, "finish_reason": "stop", "stop_reason": null}]}));
            if with_usage {
                out.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1730000000, "model": "Qwen/Qwen2.5-7B-Instruct",
                    "choices": [], "usage": usage}));
            }
        }
        // `openai`, `plain`
        _ => {
            let usage_field = if with_usage && model == "openai" {
                json!(null)
            } else {
                Value::Null
            };
            let chunk = |delta: Value, finish: Value| {
                let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": 1694268190, "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
                if with_usage && model == "openai" {
                    c["usage"] = usage_field.clone();
                }
                c
            };
            out.push(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            for piece in PIECES {
                out.push(chunk(json!({"content": piece}), Value::Null));
            }
            out.push(chunk(json!({}), json!("stop")));
            if with_usage && model == "openai" {
                out.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1694268190, "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
                    "choices": [], "usage": usage}));
            }
        }
    }
    out.into_iter().map(|v| v.to_string()).collect()
}

/// Counts a stream as finished when it ends, or as abandoned when it is dropped first
/// (hyper drops the body when the client goes away).
struct Watch {
    seen: Arc<Seen>,
    done: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.done {
            self.seen.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.seen.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn sse(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn chat(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or_default().to_string();
    count(&seen, &model, &headers);
    let with_usage = req["stream_options"]["include_usage"].as_bool() == Some(true);
    if let Some(r) = error_scenario(&model) {
        return r;
    }
    let watch = Watch {
        seen: seen.clone(),
        done: false,
    };
    let frames = frames(&model, with_usage);
    let endless = model == "endless";
    let stall = model == "stall";
    sse(stream_body(frames, watch, endless, stall))
}

/// The error answer of an `err-*` scenario; `None` for the others.
fn error_scenario(model: &str) -> Option<Response> {
    match model {
        "err-400" => Some(error(
            400,
            json!({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens.", "type": "BadRequestError", "param": null, "code": 400}),
            None,
        )),
        "err-401" => Some(error(
            401,
            json!({"error": {"message": "Incorrect API key provided: sk-te****.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            None,
        )),
        "err-404" => Some(error(
            404,
            json!({"error": {"message": "model \"nope\" not found, try pulling it first", "type": "api_error", "param": null, "code": null}}),
            None,
        )),
        "err-429" => Some(error(
            429,
            json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
            Some("1"),
        )),
        "err-503" => Some(error(
            503,
            json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
            None,
        )),
        _ => None,
    }
}

/// The frames of a scenario that answers: the events of its model (what `cut` and
/// `garbage` make of OpenAI's), then `[DONE]` where it has one.
fn frames(model: &str, with_usage: bool) -> Vec<String> {
    match model {
        "cut" => events("openai", false).into_iter().take(3).collect(),
        "garbage" => vec![events("openai", false)[1].clone(), "{not json".to_string()],
        "stall" | "endless" => Vec::new(),
        m => {
            let mut e = events(m, with_usage && m != "plain");
            e.push("[DONE]".to_string());
            e
        }
    }
}

/// The body of a streamed answer: `frames` as SSE events (`stall`: none, ever; `endless`:
/// a content chunk every 20 ms); `watch` counts how it ended.
fn stream_body(frames: Vec<String>, watch: Watch, endless: bool, stall: bool) -> Body {
    let stream = futures::stream::unfold(
        (frames.into_iter(), watch, 0usize),
        move |(mut frames, mut watch, n)| async move {
            if stall {
                std::future::pending::<()>().await;
            }
            if endless {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let chunk = json!({"id": "chatcmpl-e", "object": "chat.completion.chunk", "created": 1, "model": "endless",
                    "choices": [{"index": 0, "delta": {"content": format!(" word{n}")}, "finish_reason": null}]});
                let frame = Bytes::from(format!("data: {chunk}\n\n"));
                return Some((Ok::<_, std::io::Error>(frame), (frames, watch, n + 1)));
            }
            match frames.next() {
                Some(f) => Some((
                    Ok(Bytes::from(format!("data: {f}\n\n"))),
                    (frames, watch, n + 1),
                )),
                None => {
                    watch.done = true;
                    drop(watch);
                    None
                }
            }
        },
    );
    Body::from_stream(stream)
}

async fn embeddings(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or_default().to_string();
    count(&seen, &model, &headers);
    if model == "err-503" {
        return error(
            503,
            json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
            None,
        );
    }
    if model == "stall" {
        // No answer until the client goes away (which drops this future).
        std::future::pending::<()>().await;
    }
    let inputs: Vec<String> = req["input"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let words = t.split_whitespace().count() as f64;
            json!({"object": "embedding", "index": i, "embedding": [t.len() as f64, words, 1.0, 0.5]})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).to_string(),
    )
        .into_response()
}

async fn models() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"object": "list", "data": [{"id": "openai", "object": "model", "created": 1, "owned_by": "test"}]}).to_string(),
    )
        .into_response()
}
