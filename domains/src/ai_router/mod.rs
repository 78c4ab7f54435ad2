//! ai-router: picks a model per AI request among model-management's models, by
//! capability, the caller's latency budget, the context the request needs, cost, and the
//! player's performance profile (its largest model tier), skipping models whose circuit is
//! open; every decision carries a fallback chain (the next eligible models, best first)
//! that ai-integration follows when a call fails before its first token. Explain returns
//! every candidate with its score factors or why it was excluded; Stats the figures per
//! model over a window. Callers report outcomes (ReportOutcome), which feed the decaying
//! latency and error averages and the circuits ([`health`]).
//!
//! The player's profile comes from performance-mode over NATS when that domain is served
//! (checked with `$SRV.PING.performance_mode`, the answer kept for
//! `performance_mode_check_secs`), else from `default_profile`; a profile name maps to a
//! largest tier in `profile_tiers`. Decisions are kept in memory for Explain
//! (`decision_ttl_secs`); nothing here is durable: model specs are model-management's,
//! and health is live evidence.
//!
//! Score (higher is better), each factor shown in Explain:
//! `0.35·latency + 0.25·cost + 0.25·reliability + 0.15·tier` where latency =
//! 1/(1 + expected ms/1000), cost = 1/(1 + micros per million tokens (in + out)/10^6),
//! reliability = 1 − decayed error rate, tier = 1 − 0.2·(profile's tier − model's tier);
//! plus 1.0 for the caller's preferred model, 0.2 for the capability's default, −0.2 for
//! a DEGRADED or half-open model, −0.5 for one whose last probe failed, and −1.0 for the
//! offline provider, which so stays the last resort while anything else is eligible.
//!
//! This file holds the domain type and its handlers; beside it are `config`, `profile`
//! (the profile a request is routed under), `decide` (judging and ranking the models) and
//! [`health`] (the averages and circuits).

mod config;
mod decide;
mod health;
mod profile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aicore_proto::aicore::ai_router::v1::{
    AiRouterHandler, Capability, ExplainRequest, ExplainResponse, ModelStats, ReportOutcomeRequest,
    ReportOutcomeResponse, RouteRequest, RouteResponse, StatsRequest, StatsResponse,
    explain_request,
};
use aicore_proto::aicore::model_management::v1 as mm;
use aicore_proto::{Code, Request, Status};
use aicore_runtime::Ctx;

pub use config::{AiRouterConfig, Tier};

use self::health::{ModelHealth, Sample, Tuning};

/// A decision kept for Explain, with the models already reported on.
struct Decision {
    explained: ExplainResponse,
    reported: Mutex<Vec<String>>,
}

/// The ai-router domain.
pub struct AiRouter {
    ctx: Ctx,
    config: AiRouterConfig,
    tuning: Tuning,
    health: Mutex<HashMap<String, ModelHealth>>,
    decisions: moka::sync::Cache<String, Arc<Decision>>,
    models: moka::sync::Cache<i32, Arc<Vec<mm::Model>>>,
    /// Whether performance-mode answered `$SRV.PING`, and when that was checked.
    performance_mode: Mutex<Option<(std::time::Instant, bool)>>,
}

/// The capability a request names; InvalidArgument unless it is a known one.
fn capability(n: i32) -> Result<Capability, Status> {
    match Capability::try_from(n) {
        Ok(Capability::Unspecified) | Err(_) => Err(Status::invalid(
            "capability",
            "must be CAPABILITY_CHAT, CAPABILITY_COMPLETION or CAPABILITY_EMBEDDING",
        )),
        Ok(c) => Ok(c),
    }
}

/// `d` as a protobuf duration (none if it does not fit).
fn duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

impl AiRouter {
    /// The domain on a context.
    pub fn new(ctx: Ctx, config: AiRouterConfig) -> Self {
        let tuning = Tuning {
            failure_threshold: config.failure_threshold.max(1),
            open: Duration::from_secs(config.open_secs),
            trial_timeout: Duration::from_secs(config.trial_timeout_secs.max(1)),
            half_life: Duration::from_secs(config.half_life_secs.max(1)),
        };
        AiRouter {
            decisions: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(config.decision_ttl_secs.max(1)))
                .build(),
            models: moka::sync::Cache::builder()
                .max_capacity(16)
                .time_to_live(Duration::from_millis(config.models_cache_ms.max(1)))
                .build(),
            ctx,
            config,
            tuning,
            health: Mutex::new(HashMap::new()),
            performance_mode: Mutex::new(None),
        }
    }

    /// The models' health, locked (a poisoned lock is taken over: the figures stay usable).
    fn health(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelHealth>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AiRouterHandler for AiRouter {
    async fn route(&self, request: Request<RouteRequest>) -> Result<RouteResponse, Status> {
        let req = request.body;
        let (decision, candidates) = self.decide(&req).await?;
        self.health()
            .entry(decision.model_id.clone())
            .or_default()
            .chosen(self.ctx.clock.now());
        self.decisions.insert(
            decision.decision_id.clone(),
            Arc::new(Decision {
                explained: ExplainResponse {
                    decision: Some(decision.clone()),
                    candidates,
                },
                reported: Mutex::new(Vec::new()),
            }),
        );
        Ok(decision)
    }

    async fn explain(&self, request: Request<ExplainRequest>) -> Result<ExplainResponse, Status> {
        match request.body.target {
            Some(explain_request::Target::DecisionId(id)) => self
                .decisions
                .get(&id)
                .map(|d| d.explained.clone())
                .ok_or_else(|| {
                    Status::with_field(
                        Code::NotFound,
                        "decision_id",
                        format!(
                            "no decision {id} (kept {} s)",
                            self.config.decision_ttl_secs
                        ),
                    )
                }),
            Some(explain_request::Target::Route(req)) => {
                let (decision, candidates) = self.decide(&req).await?;
                Ok(ExplainResponse {
                    decision: Some(decision),
                    candidates,
                })
            }
            None => Err(Status::invalid(
                "target",
                "give a decision_id or a route request",
            )),
        }
    }

    async fn stats(&self, request: Request<StatsRequest>) -> Result<StatsResponse, Status> {
        let req = request.body;
        let window = match req.window {
            None => Duration::from_secs(15 * 60),
            Some(w) => match Duration::try_from(w) {
                Ok(w) if !w.is_zero() && w <= Duration::from_secs(24 * 3600) => w,
                _ => {
                    return Err(Status::invalid(
                        "window",
                        "must be above 0 and at most 24 hours",
                    ));
                }
            },
        };
        let now = self.ctx.clock.now();
        let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut health = self.health();
        let mut ids: Vec<String> = health
            .keys()
            .filter(|k| req.model_id.is_empty() || **k == req.model_id)
            .cloned()
            .collect();
        ids.sort();
        let mut models = Vec::new();
        for id in ids {
            let Some(h) = health.get_mut(&id) else {
                continue;
            };
            h.tick(now, &self.tuning);
            let recent: Vec<&Sample> = h.samples.iter().filter(|s| s.at >= since).collect();
            let mut lat: Vec<Duration> = recent
                .iter()
                .filter(|s| s.success)
                .map(|s| s.latency)
                .collect();
            lat.sort();
            let pct = |p: f64| {
                (!lat.is_empty())
                    .then(|| lat[((lat.len() - 1) as f64 * p).round() as usize])
                    .and_then(duration)
            };
            models.push(ModelStats {
                model_id: id.clone(),
                routed: h.routed.iter().filter(|t| **t >= since).count() as u64,
                successes: recent.iter().filter(|s| s.success).count() as u64,
                failures: recent.iter().filter(|s| !s.success).count() as u64,
                latency_p50: pct(0.5),
                latency_p95: pct(0.95),
                prompt_tokens: recent.iter().map(|s| u64::from(s.prompt_tokens)).sum(),
                completion_tokens: recent.iter().map(|s| u64::from(s.completion_tokens)).sum(),
                circuit: h.state() as i32,
                circuit_retry_at: h.retry_at().map(aicore_runtime::timestamp),
            });
        }
        Ok(StatsResponse {
            models,
            window: duration(window),
        })
    }

    async fn report_outcome(
        &self,
        request: Request<ReportOutcomeRequest>,
    ) -> Result<ReportOutcomeResponse, Status> {
        let req = request.body;
        if req.model_id.is_empty() || req.model_id.len() > 64 {
            return Err(Status::invalid("model_id", "must be 1 to 64 characters"));
        }
        if req.error.chars().count() > 256 {
            return Err(Status::invalid("error", "at most 256 characters"));
        }
        let latency = match req.latency {
            None => Duration::ZERO,
            Some(d) => Duration::try_from(d)
                .map_err(|_| Status::invalid("latency", "must not be negative"))?,
        };
        let repeated = match self.decisions.get(&req.decision_id) {
            Some(d) => {
                let mut seen = d.reported.lock().unwrap_or_else(|p| p.into_inner());
                let repeated = seen.contains(&req.model_id);
                if !repeated {
                    seen.push(req.model_id.clone());
                }
                repeated
            }
            None => false,
        };
        let mut health = self.health();
        let h = health.entry(req.model_id.clone()).or_default();
        if !repeated {
            h.report(
                Sample {
                    at: self.ctx.clock.now(),
                    success: req.success,
                    latency,
                    prompt_tokens: req.prompt_tokens,
                    completion_tokens: req.completion_tokens,
                },
                &self.tuning,
            );
        }
        Ok(ReportOutcomeResponse {
            circuit: h.state() as i32,
        })
    }
}

impl aicore_runtime::Domain for AiRouter {
    type Config = AiRouterConfig;

    fn build(
        ctx: &Ctx,
        config: &AiRouterConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        if !config.profile_tiers.contains_key(&config.default_profile) {
            return Err(Status::invalid(
                "default_profile",
                format!(
                    "[domains.ai_router] default_profile {:?} is not in profile_tiers",
                    config.default_profile
                ),
            ));
        }
        Ok(Arc::new(
            aicore_proto::aicore::ai_router::v1::AiRouterServer(Arc::new(AiRouter::new(
                ctx.clone(),
                config.clone(),
            ))),
        ))
    }
}

#[cfg(test)]
mod tests;
