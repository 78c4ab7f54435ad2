//! A Chat as the caller sees it — `started`, `delta`s, one `summary` — and a Complete as
//! the same generation collected, with the [`Recorder`] that writes each request's token
//! counts and `AiRecord` once, however it ends (`cancelled` when the caller goes away
//! mid-stream: dropping the stream drops the provider's answer, which closes its
//! connection, and the recorder, which counts the text generated so far).

use std::sync::Arc;
use std::time::Instant;

use aicore_proto::aicore::ai_integration::v1::{
    ChatResponse, ChatStarted, ChatSummary, CompleteResponse, FinishReason, ServedBy, Usage,
    chat_response,
};
use aicore_proto::{Status, Streaming};
use futures::StreamExt;

use super::accounting::{self, Outcome};
use super::generate::{Cached, Inner, Job, Target};
use super::provider::{Piece, Pieces, estimate_tokens};
/// Writes a request's record once, however it ends: `finish` on the normal paths, or,
/// when dropped unfinished (the caller went away mid-stream), as `cancelled` in a task.
pub(super) struct Recorder {
    inner: Arc<Inner>,
    outcome: Option<Outcome>,
    started: Instant,
}

impl Recorder {
    pub(super) fn new(inner: Arc<Inner>, job: &Job) -> Recorder {
        Recorder {
            outcome: Some(Outcome {
                rpc: job.rpc,
                request_id: job
                    .meta
                    .request_id
                    .clone()
                    .unwrap_or_else(|| aicore_runtime::new_id("air")),
                player: job.player.clone(),
                prompt: job.prompt_text(),
                ..Default::default()
            }),
            inner,
            started: Instant::now(),
        }
    }

    pub(super) fn outcome(&mut self) -> &mut Outcome {
        self.outcome.get_or_insert_with(Default::default)
    }

    pub(super) async fn finish(&mut self, outcome: &'static str) {
        let Some(mut o) = self.outcome.take() else {
            return;
        };
        o.outcome = outcome;
        o.latency = self.started.elapsed();
        write(&self.inner, o).await;
    }
}

async fn write(inner: &Inner, o: Outcome) {
    let now = inner.ctx.clock.now();
    if let Err(e) = accounting::record(&inner.ctx.store, now, o, inner.config.record_prompts).await
    {
        tracing::warn!(error = %e, "AI request record not written");
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let Some(mut o) = self.outcome.take() else {
            return;
        };
        o.outcome = "cancelled";
        o.latency = self.started.elapsed();
        // The provider was cut off before it reported usage: count what it generated.
        if o.provider_called && o.usage.is_none() {
            o.usage = Some(usage_of(None, &o.prompt, &o.answer));
        }
        let inner = self.inner.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { write(&inner, o).await });
        }
    }
}

/// Usage as reported, or estimated from the texts.
pub(super) fn usage_of(
    reported: Option<super::provider::Tokens>,
    prompt: &str,
    answer: &str,
) -> Usage {
    match reported {
        Some(t) => Usage {
            prompt_tokens: t.prompt,
            completion_tokens: t.completion,
            total_tokens: t.prompt.saturating_add(t.completion),
            estimated: false,
        },
        None => {
            let (p, c) = (estimate_tokens(prompt), estimate_tokens(answer));
            Usage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: p + c,
                estimated: true,
            }
        }
    }
}

/// The state of a Chat stream (dropping it drops the provider's answer, which closes the
/// provider connection, and the recorder, which records `cancelled`).
enum ChatState {
    Begin(Arc<Inner>, Box<Job>, tokio::time::Instant),
    Live(Box<Live>),
    Finishing(Box<Live>),
    Over,
}

struct Live {
    inner: Arc<Inner>,
    pending: Option<Piece>,
    rest: Pieces,
    text: String,
    recorder: Recorder,
    served_by: ServedBy,
    decision_id: String,
    target: Target,
    cache_key: Option<[u8; 32]>,
    finish: FinishReason,
    prompt: String,
}

fn item(i: chat_response::Item) -> ChatResponse {
    ChatResponse { item: Some(i) }
}

/// A Chat as a stream: `started`, `delta`s, one `summary`.
pub fn chat(inner: Arc<Inner>, job: Job) -> Streaming<ChatResponse> {
    let arrived = tokio::time::Instant::now();
    let state = ChatState::Begin(inner, Box::new(job), arrived);
    futures::stream::unfold(state, |state| async move {
        match state {
            ChatState::Over => None,
            ChatState::Begin(inner, job, arrived) => begin(inner, job, arrived).await,
            ChatState::Live(live) => next_piece(live).await,
            ChatState::Finishing(live) => {
                finishing(live).await;
                None
            }
        }
    })
    .boxed()
}

/// One turn of the Chat stream: the item it yields and the state after it.
type Turn = Option<(Result<ChatResponse, Status>, ChatState)>;

/// The start of a Chat: `started` once a provider (or the cache) answers, or its error.
async fn begin(inner: Arc<Inner>, job: Box<Job>, arrived: tokio::time::Instant) -> Turn {
    let mut recorder = Recorder::new(inner.clone(), &job);
    match inner.start(&job, arrived).await {
        Err((status, served_by)) => {
            let o = recorder.outcome();
            o.served_by = served_by;
            o.error = status.to_string();
            recorder.finish("error").await;
            Some((Err(status), ChatState::Over))
        }
        Ok(s) => {
            let first_token = arrived.elapsed();
            let o = recorder.outcome();
            o.served_by = s.served_by.clone();
            o.first_token = Some(first_token);
            o.provider_called = !s.served_by.cached;
            let live = Live {
                inner,
                pending: Some(s.first),
                rest: s.rest,
                text: String::new(),
                recorder,
                decision_id: s.served_by.decision_id.clone(),
                served_by: s.served_by.clone(),
                target: s.target,
                cache_key: s.cache_key,
                finish: FinishReason::Stop,
                prompt: job.prompt_text(),
            };
            let started = item(chat_response::Item::Started(ChatStarted {
                served_by: Some(s.served_by),
            }));
            Some((Ok(started), ChatState::Live(Box::new(live))))
        }
    }
}

/// The next piece of a live Chat: a `delta`, the `summary`, or the error that ends it.
async fn next_piece(mut live: Box<Live>) -> Turn {
    let next = match live.pending.take() {
        Some(p) => Some(Ok(p)),
        None => live.rest.next().await,
    };
    match next {
        Some(Ok(Piece::Text(t))) => {
            live.text.push_str(&t);
            // So a record written on cancellation counts what was generated.
            live.recorder.outcome().answer.push_str(&t);
            Some((
                Ok(item(chat_response::Item::Delta(t))),
                ChatState::Live(live),
            ))
        }
        Some(Ok(Piece::Done { finish, usage })) => {
            let usage = if live.served_by.cached {
                Usage::default()
            } else {
                usage_of(usage, &live.prompt, &live.text)
            };
            live.finish = finish;
            live.recorder.outcome().usage = Some(usage);
            let summary = item(chat_response::Item::Summary(ChatSummary {
                finish_reason: finish as i32,
                usage: Some(usage),
            }));
            Some((Ok(summary), ChatState::Finishing(live)))
        }
        Some(Err(e)) => {
            live.inner
                .report(&live.decision_id, &live.target.model_id, Err(&e));
            let status = Status::from(e);
            let estimate = usage_of(None, &live.prompt, &live.text);
            let o = live.recorder.outcome();
            o.error = status.to_string();
            o.usage = Some(estimate);
            live.recorder.finish("error").await;
            Some((Err(status), ChatState::Over))
        }
        None => {
            live.recorder.finish("error").await;
            Some((
                Err(Status::internal("the answer ended without a summary")),
                ChatState::Over,
            ))
        }
    }
}

/// After the `summary`: the provider's report, the cache entry and the record.
async fn finishing(mut live: Box<Live>) {
    let usage = live.recorder.outcome().usage.unwrap_or_default();
    if !live.served_by.cached {
        live.inner.report(
            &live.decision_id,
            &live.target.model_id,
            Ok((live.recorder.started.elapsed(), usage)),
        );
    }
    if let Some(k) = live.cache_key {
        live.inner.cache.insert(
            k,
            Arc::new(Cached::Text {
                text: live.text.clone(),
                finish: live.finish,
            }),
        );
    }
    live.recorder.finish("ok").await;
}

/// A Complete: the same generation, collected.
pub async fn complete(inner: Arc<Inner>, job: Job) -> Result<CompleteResponse, Status> {
    let mut stream = chat(inner, job);
    let mut out = CompleteResponse::default();
    while let Some(item) = stream.next().await {
        match item?.item {
            Some(chat_response::Item::Started(s)) => out.served_by = s.served_by,
            Some(chat_response::Item::Delta(t)) => out.text.push_str(&t),
            Some(chat_response::Item::Summary(s)) => {
                out.finish_reason = s.finish_reason;
                out.usage = s.usage;
            }
            None => {}
        }
    }
    Ok(out)
}
