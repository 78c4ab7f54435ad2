//! Probe: one minimal call of the model through ai-integration (over NATS, bypassing its
//! cache) within the configured timeout and the caller's deadline, its latency and
//! outcome judged as a status, and that status recorded on the model unless it was
//! removed or disabled meanwhile.

use std::time::Duration;

use aicore_proto::aicore::ai_integration::v1 as ai;
use aicore_proto::aicore::model_management::v1::{
    Capability, Model, ModelStatus, ProbeRequest, ProbeResponse,
};
use aicore_proto::{CallOptions, Code, Request, Status};

use super::check::check_id;
use super::{MODELS, ModelManagement};

impl ModelManagement {
    /// Probe (the handler).
    pub(super) async fn probe_model(
        &self,
        request: Request<ProbeRequest>,
    ) -> Result<ProbeResponse, Status> {
        let Request { body: req, meta } = request;
        check_id(&req.model_id)?;
        let model = self.read(&req.model_id)?;
        let spec = model.spec.clone().unwrap_or_default();
        if spec.disabled {
            return Err(Status::with_field(
                Code::FailedPrecondition,
                "model_id",
                format!("model {} is disabled; enable it to probe it", req.model_id),
            ));
        }
        let client = self.ctx.client()?.clone();
        let mut wait = Duration::from_millis(self.config.probe_timeout_ms);
        if let Some(left) = meta.remaining() {
            // Keep time to record the outcome.
            wait = wait.min(left.saturating_sub(Duration::from_millis(500)));
        }
        let options = CallOptions::timeout(wait.max(Duration::from_millis(1)));
        let ai = ai::AiIntegrationClient::new(client);
        let text_capable = spec
            .capabilities
            .iter()
            .any(|c| *c == Capability::Chat as i32 || *c == Capability::Completion as i32);
        let started = tokio::time::Instant::now();
        let outcome = ping(&ai, text_capable, &req.model_id, &options).await;
        let latency = started.elapsed();
        let status = match &outcome {
            Ok(()) if latency > Duration::from_millis(self.config.degraded_latency_ms) => {
                ModelStatus::Degraded
            }
            Ok(()) => ModelStatus::Ready,
            Err(_) => ModelStatus::Unavailable,
        };
        let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        let now = self.ctx.now_ts();
        let latency_pb = prost_types::Duration::try_from(latency).ok();
        self.record_probe(req.model_id, status, error.clone(), latency_pb, now)
            .await?;
        Ok(ProbeResponse {
            ok: error.is_empty(),
            latency: latency_pb,
            error,
            status: status as i32,
            probed_at: Some(now),
        })
    }

    /// Records a probe's outcome on model `id`: its status, when, its latency (when it
    /// answered) and its error (empty when it answered).
    async fn record_probe(
        &self,
        id: String,
        status: ModelStatus,
        err: String,
        written: Option<prost_types::Duration>,
        now: prost_types::Timestamp,
    ) -> Result<(), Status> {
        self.ctx
            .store
            .write(move |tx| {
                // The model may have been removed or disabled meanwhile: record nothing.
                let Some(mut m) = tx.get_msg::<Model>(MODELS, id.as_bytes())? else {
                    return Ok(());
                };
                if m.spec.as_ref().is_some_and(|s| s.disabled) {
                    return Ok(());
                }
                m.status = status as i32;
                m.last_probed_at = Some(now);
                if err.is_empty() {
                    m.last_latency = written;
                }
                m.last_error = err;
                tx.put_msg(MODELS, id.as_bytes(), &m);
                Ok(())
            })
            .await
    }
}

/// The probe's call: a one-token completion of `ping` for a chat or completion model,
/// else an embedding of `ping`, never from ai-integration's cache.
async fn ping(
    ai: &ai::AiIntegrationClient<aicore_sdk::Client>,
    text_capable: bool,
    model_id: &str,
    options: &CallOptions,
) -> Result<(), Status> {
    if text_capable {
        ai.complete(
            ai::CompleteRequest {
                prompt: "ping".into(),
                model_id: model_id.to_string(),
                params: Some(ai::GenerationParams {
                    max_tokens: 1,
                    temperature: Some(0.0),
                    ..Default::default()
                }),
                no_cache: true,
                ..Default::default()
            },
            options,
        )
        .await
        .map(|_| ())
    } else {
        ai.embed(
            ai::EmbedRequest {
                inputs: vec!["ping".into()],
                model_id: model_id.to_string(),
                player_id: String::new(),
            },
            options,
        )
        .await
        .map(|_| ())
    }
}
