//! The OpenAI-compatible provider: llama.cpp's server, Ollama, vLLM, LM Studio and hosted
//! APIs all speak `POST <base>/chat/completions` (here always with `stream: true`, read as
//! Server-Sent Events up to `data: [DONE]`), `POST <base>/embeddings` and
//! `GET <base>/models`, where `<base>` is the configured base URL including its `/v1`.
//!
//! What it guarantees:
//! - **Bounded time**: connecting (`connect_timeout_ms`), the first token (counted from
//!   the call, retries and waiting for a slot included) and the whole answer each have a
//!   bound, and none outlives the caller's deadline.
//! - **Bounded load**: at most `max_concurrent` calls to one provider at once; a call that
//!   gets no slot before its first-token bound is refused as busy.
//! - **Retries** only before anything was received, on 429, 5xx and refused connections,
//!   with exponential backoff and jitter, honouring `Retry-After` (in seconds) — never past
//!   the first-token bound: a wait that would not fit returns the provider's answer now.
//! - **Honest ends**: a stream must end with `[DONE]`; one that stops before, sends an
//!   `error` event or something that is not JSON is an error, never a short answer.
//! - **Cancellation**: the answer is a stream owning the HTTP response; dropping it (the
//!   caller went away) closes the connection, which is how every one of these servers
//!   learns to stop generating.
//! - The API key goes only into the `Authorization` header; it is never logged, never in
//!   an error and never in a record.

use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::ai_integration::v1::{FinishReason, Role};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::provider::{
    ChatCall, ChatStart, Embeddings, Failure, Piece, Pieces, ProviderError, Tokens,
};
use super::sse::{SseReader, root_cause};

/// Longest excerpt of a provider's error body kept in a message.
const ERROR_EXCERPT: usize = 300;
/// Largest error body read.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Largest embeddings answer read.
const MAX_EMBED_BODY: usize = 64 << 20;

/// An API key; its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Retries of one provider.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Further attempts after the first.
    pub max_retries: u32,
    /// First pause; doubles per retry.
    pub base: Duration,
    /// Longest pause.
    pub max: Duration,
}

/// When a call must have produced its first piece, and when it must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// The first token (or the embeddings) by then.
    pub first: Instant,
    /// Everything by then.
    pub total: Instant,
}

/// One OpenAI-compatible provider.
pub struct OpenAi {
    id: String,
    base_url: String,
    key: Option<Secret>,
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    retry: RetryPolicy,
    stream_usage: bool,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

/// What to build a provider from.
pub struct Options {
    /// The provider id.
    pub id: String,
    /// Base URL including `/v1`.
    pub base_url: String,
    /// API key, if any.
    pub key: Option<Secret>,
    /// Most calls at once.
    pub max_concurrent: usize,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Retries.
    pub retry: RetryPolicy,
    /// Ask for usage in the last chunk (`stream_options.include_usage`).
    pub stream_usage: bool,
}

impl OpenAi {
    /// A provider; the HTTP client uses the process's rustls provider (ring).
    pub fn new(o: Options) -> Result<OpenAi, String> {
        // The appliance installs ring at the top of `main`; a test or tool building a
        // provider first gets the same (never aws-lc-rs: see SECURITY.md).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(o.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("aicore/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("provider {}: cannot build its HTTP client: {e}", o.id))?;
        Ok(OpenAi {
            id: o.id,
            base_url: o.base_url.trim_end_matches('/').to_string(),
            key: o.key,
            http,
            slots: Arc::new(Semaphore::new(o.max_concurrent.max(1))),
            retry: o.retry,
            stream_usage: o.stream_usage,
        })
    }

    /// The provider id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The configured base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether a key is configured.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    fn err(&self, failure: Failure, message: impl Into<String>) -> ProviderError {
        ProviderError::new(&self.id, failure, message)
    }

    fn url(&self, endpoint: &str, path: &str) -> String {
        let base = if endpoint.is_empty() {
            self.base_url.as_str()
        } else {
            endpoint.trim_end_matches('/')
        };
        format!("{base}{path}")
    }

    /// Waits for a slot until `by`.
    async fn slot(&self, by: Instant) -> Result<tokio::sync::OwnedSemaphorePermit, ProviderError> {
        match tokio::time::timeout_at(by, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(self.err(Failure::Unavailable, "the provider is shut down")),
            Err(_) => Err(self.err(
                Failure::Busy,
                "every slot for concurrent calls stayed taken; try again shortly",
            )),
        }
    }

    /// Sends `request` (built afresh per attempt) until it answers 2xx, retrying what may
    /// be retried within `by`.
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
        by: Instant,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut attempt = 0u32;
        loop {
            let mut request = build();
            if let Some(key) = &self.key {
                request = request.bearer_auth(&key.0);
            }
            let e = match tokio::time::timeout_at(by, request.send()).await {
                Err(_) => return Err(self.err(Failure::Timeout, "no answer in time")),
                Ok(Err(e)) if e.is_timeout() => {
                    return Err(self.err(Failure::Timeout, "connecting took too long"));
                }
                Ok(Err(e)) => self.err(
                    Failure::Unavailable,
                    format!("cannot reach {}: {}", self.base_url, root_cause(&e)),
                ),
                Ok(Ok(r)) if r.status().is_success() => return Ok(r),
                Ok(Ok(r)) => self.refusal(r).await,
            };
            let retryable = matches!(e.failure, Failure::RateLimited(_) | Failure::Unavailable);
            if !retryable || attempt >= self.retry.max_retries {
                return Err(e);
            }
            let pause = match e.failure {
                Failure::RateLimited(Some(after)) => after,
                _ => backoff(self.retry, attempt),
            };
            if Instant::now() + pause >= by {
                return Err(e);
            }
            tracing::debug!(provider = %self.id, attempt, error = %e, ?pause, "retrying");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// The error a non-2xx answer stands for.
    async fn refusal(&self, r: reqwest::Response) -> ProviderError {
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_limited(r, MAX_ERROR_BODY).await.unwrap_or_default();
        let detail = error_message(&body);
        let message = format!("answered HTTP {status}: {detail}");
        let failure = match status {
            400 | 404 | 413 | 422 => Failure::BadRequest,
            401 | 403 => Failure::Auth,
            429 => Failure::RateLimited(retry_after),
            _ => Failure::Unavailable,
        };
        self.err(failure, message)
    }

    /// Starts a chat: connects (retrying), then reads up to the first piece.
    pub async fn chat(&self, call: &ChatCall, by: Deadlines) -> Result<ChatStart, ProviderError> {
        let permit = self.slot(by.first).await?;
        let mut body = json!({
            "model": call.model,
            "messages": call.messages.iter().map(|m| json!({
                "role": role_name(m.role),
                "content": m.content,
            })).collect::<Vec<_>>(),
            "stream": true,
            "max_tokens": call.params.max_tokens,
        });
        if let Some(t) = call.params.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = call.params.top_p {
            body["top_p"] = json!(p);
        }
        if !call.params.stop.is_empty() {
            body["stop"] = json!(call.params.stop);
        }
        if let Some(s) = call.params.seed {
            body["seed"] = json!(s);
        }
        if self.stream_usage {
            body["stream_options"] = json!({ "include_usage": true });
        }
        let url = self.url(&call.endpoint, "/chat/completions");
        let response = self
            .send(
                || {
                    self.http
                        .post(&url)
                        .header(reqwest::header::ACCEPT, "text/event-stream")
                        .json(&body)
                },
                by.first,
            )
            .await?;
        let mut reader = Chunks {
            provider: self.id.clone(),
            events: SseReader::new(response.bytes_stream().boxed()),
            finish: None,
            usage: None,
            ended: false,
            _permit: permit,
        };
        let first = match tokio::time::timeout_at(by.first, reader.next_piece()).await {
            Err(_) => return Err(self.err(Failure::Timeout, "no first token in time")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => unreachable!("a stream yields a piece or an error before it ends"),
            Ok(Ok(Some(p))) => p,
        };
        let provider = self.id.clone();
        let total = by.total;
        let rest = futures::stream::unfold(Some(reader), move |state| {
            let provider = provider.clone();
            async move {
                let mut reader = state?;
                match tokio::time::timeout_at(total, reader.next_piece()).await {
                    Err(_) => Some((
                        Err(ProviderError::new(
                            &provider,
                            Failure::Timeout,
                            "the answer did not finish in time",
                        )),
                        None,
                    )),
                    Ok(Err(e)) => Some((Err(e), None)),
                    Ok(Ok(None)) => None,
                    Ok(Ok(Some(p))) => Some((Ok(p), Some(reader))),
                }
            }
        });
        Ok(ChatStart {
            first,
            rest: rest.boxed() as Pieces,
        })
    }

    /// Embeds `inputs` with `model`.
    pub async fn embed(
        &self,
        model: &str,
        endpoint: &str,
        inputs: &[String],
        by: Deadlines,
    ) -> Result<Embeddings, ProviderError> {
        let _permit = self.slot(by.first).await?;
        let body = json!({ "model": model, "input": inputs, "encoding_format": "float" });
        let url = self.url(endpoint, "/embeddings");
        let response = self
            .send(|| self.http.post(&url).json(&body), by.first)
            .await?;
        let raw = match tokio::time::timeout_at(by.total, read_limited(response, MAX_EMBED_BODY))
            .await
        {
            Err(_) => return Err(self.err(Failure::Timeout, "the embeddings did not come in time")),
            Ok(r) => r.map_err(|e| self.err(Failure::Unavailable, e))?,
        };
        let v: Value = serde_json::from_slice(&raw)
            .map_err(|e| self.err(Failure::Malformed, format!("embeddings are not JSON: {e}")))?;
        let data = v["data"]
            .as_array()
            .ok_or_else(|| self.err(Failure::Malformed, "embeddings answer without `data`"))?;
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
        for (i, item) in data.iter().enumerate() {
            let index = item["index"].as_u64().map_or(i, |x| x as usize);
            let values = item["embedding"]
                .as_array()
                .ok_or_else(|| self.err(Failure::Malformed, "an embedding is not a list"))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| self.err(Failure::Malformed, "an embedding holds a non-number"))?;
            match vectors.get_mut(index) {
                Some(slot) => *slot = Some(values),
                None => {
                    return Err(self.err(Failure::Malformed, "an embedding index is out of range"));
                }
            }
        }
        let vectors = vectors
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.err(Failure::Malformed, "fewer embeddings than inputs"))?;
        let dims = vectors.first().map_or(0, Vec::len);
        if vectors.iter().any(|v| v.len() != dims) {
            return Err(self.err(Failure::Malformed, "embeddings of different lengths"));
        }
        Ok(Embeddings {
            vectors,
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().map(|x| x as u32),
        })
    }

    /// Checks that the provider answers `GET <base>/models`.
    pub async fn health(&self, by: Instant) -> Result<(), ProviderError> {
        let url = self.url("", "/models");
        let response = self.send(|| self.http.get(&url), by).await?;
        let raw = read_limited(response, MAX_EMBED_BODY)
            .await
            .map_err(|e| self.err(Failure::Unavailable, e))?;
        let v: Value = serde_json::from_slice(&raw)
            .map_err(|e| self.err(Failure::Malformed, format!("models are not JSON: {e}")))?;
        if v["data"].is_array() {
            Ok(())
        } else {
            Err(self.err(Failure::Malformed, "models answer without `data`"))
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::Assistant => "assistant",
        Role::User | Role::Unspecified => "user",
    }
}

/// The pause before retry number `attempt` (0-based): `base · 2^attempt`, capped, with
/// up to a quarter of jitter off so callers retrying together spread out.
fn backoff(p: RetryPolicy, attempt: u32) -> Duration {
    let full = p
        .base
        .saturating_mul(1u32 << attempt.min(16))
        .min(p.max.max(p.base));
    let jitter = rand::random::<f64>() * 0.25;
    full.mul_f64(1.0 - jitter)
}

/// Reads at most `limit` bytes of a body.
async fn read_limited(r: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = r.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("the answer was cut: {}", root_cause(&e)))?;
        out.extend_from_slice(&chunk);
        if out.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
    }
    Ok(out)
}

/// A readable message out of a provider's error body: OpenAI, llama.cpp and Ollama send
/// `{"error": {"message": …}}`, vLLM `{"message": …}`, some `{"error": "…"}`; anything else
/// is shown as an excerpt.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or(v["error"].as_str())
            .or(v["message"].as_str())
            .or(v["detail"].as_str())
            .map(str::to_string)
    });
    let message = from_json.unwrap_or_else(|| text.trim().to_string());
    let excerpt: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(ERROR_EXCERPT)
        .collect();
    if excerpt.is_empty() {
        "(no body)".to_string()
    } else {
        excerpt
    }
}

/// Chat completion chunks read from an SSE stream, as pieces.
struct Chunks {
    provider: String,
    events: SseReader,
    finish: Option<FinishReason>,
    usage: Option<Tokens>,
    ended: bool,
    /// The provider slot, held until the answer is dropped.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Chunks {
    fn err(&self, failure: Failure, message: impl Into<String>) -> ProviderError {
        ProviderError::new(&self.provider, failure, message)
    }

    /// The next piece; `Ok(None)` after the end piece.
    async fn next_piece(&mut self) -> Result<Option<Piece>, ProviderError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let data = match self.events.next_event().await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    return Err(self.err(
                        Failure::Malformed,
                        "the stream ended before [DONE]: the answer is incomplete",
                    ));
                }
                Err(e) => return Err(self.err(Failure::Unavailable, e)),
            };
            if data.trim() == "[DONE]" {
                self.ended = true;
                return Ok(Some(Piece::Done {
                    finish: self.finish.unwrap_or(FinishReason::Stop),
                    usage: self.usage,
                }));
            }
            let v: Value = serde_json::from_str(&data)
                .map_err(|e| self.err(Failure::Malformed, format!("a chunk is not JSON: {e}")))?;
            if !v["error"].is_null() {
                let message = error_message(data.as_bytes());
                return Err(self.err(
                    Failure::Unavailable,
                    format!("reported an error mid-stream: {message}"),
                ));
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                let n = |k: &str| u[k].as_u64().map(|x| x.min(u32::MAX as u64) as u32);
                if let (Some(prompt), Some(completion)) =
                    (n("prompt_tokens"), n("completion_tokens"))
                {
                    self.usage = Some(Tokens { prompt, completion });
                }
            }
            let choice = &v["choices"][0];
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish = Some(match reason {
                    "length" => FinishReason::Length,
                    "content_filter" => FinishReason::ContentFilter,
                    _ => FinishReason::Stop,
                });
            }
            match choice["delta"]["content"].as_str() {
                Some(text) if !text.is_empty() => return Ok(Some(Piece::Text(text.to_string()))),
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_each_server_give_their_message() {
        assert_eq!(
            error_message(
                br#"{"error":{"message":"model not found","type":"invalid_request_error"}}"#
            ),
            "model not found"
        );
        assert_eq!(
            error_message(br#"{"object":"error","message":"max_tokens too large","code":400}"#),
            "max_tokens too large"
        );
        assert_eq!(error_message(br#"{"error":"overloaded"}"#), "overloaded");
        assert_eq!(error_message(b"Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(b""), "(no body)");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for (attempt, full) in [(0, 100), (1, 200), (2, 400), (5, 1000)] {
            let d = backoff(p, attempt).as_millis() as u64;
            assert!(d <= full && d >= full * 3 / 4, "{attempt}: {d}");
        }
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let p = OpenAi::new(Options {
            id: "hosted".into(),
            base_url: "http://127.0.0.1:9/v1".into(),
            key: Some(Secret("sk-very-secret".into())),
            max_concurrent: 1,
            connect_timeout: Duration::from_secs(1),
            retry: RetryPolicy {
                max_retries: 0,
                base: Duration::from_millis(1),
                max: Duration::from_millis(1),
            },
            stream_usage: true,
        });
        let p = match p {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert!(!format!("{p:?}").contains("sk-very-secret"));
    }
}
