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

mod health;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aicore_proto::aicore::ai_router::v1::{
    AiRouterHandler, Candidate, Capability, CircuitState, ExplainRequest, ExplainResponse,
    ModelStats, ReportOutcomeRequest, ReportOutcomeResponse, RouteRequest, RouteResponse,
    StatsRequest, StatsResponse, explain_request,
};
use aicore_proto::aicore::model_management::v1 as mm;
use aicore_proto::aicore::performance_mode::v1 as pm;
use aicore_proto::{CallOptions, Code, Request, Status};
use aicore_runtime::{Ctx, new_id, validate};

use self::health::{ModelHealth, Sample, Tuning};

/// A model size class in configuration.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Small models.
    Small,
    /// Medium models.
    Medium,
    /// Large models.
    Large,
}

impl Tier {
    fn from_model(t: i32) -> Tier {
        match mm::ModelTier::try_from(t) {
            Ok(mm::ModelTier::Large) => Tier::Large,
            Ok(mm::ModelTier::Medium) => Tier::Medium,
            _ => Tier::Small,
        }
    }

    fn rank(self) -> i32 {
        self as i32
    }
}

/// Configuration of ai-router (`[domains.ai_router]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiRouterConfig {
    /// The profile of a player performance-mode says nothing about (or when it is not
    /// served).
    pub default_profile: String,
    /// Ask performance-mode for the player's profile when it is served.
    pub ask_performance_mode: bool,
    /// How long the answer to "is performance-mode served?" is kept, in seconds.
    pub performance_mode_check_secs: u64,
    /// Failures in a row that open a model's circuit.
    pub failure_threshold: u32,
    /// How long an open circuit skips its model before a trial call, in seconds.
    pub open_secs: u64,
    /// How long a trial call may go unreported before another is allowed, in seconds.
    pub trial_timeout_secs: u64,
    /// Half-life of the latency and error-rate averages, in seconds.
    pub half_life_secs: u64,
    /// Latency assumed for a model never measured (no report, no probe), in milliseconds.
    pub unknown_latency_ms: u64,
    /// Most fallback models in a decision.
    pub max_fallbacks: usize,
    /// How long decisions are kept for Explain, in seconds.
    pub decision_ttl_secs: u64,
    /// How long model-management's model list is reused, in milliseconds.
    pub models_cache_ms: u64,
    /// The largest model tier each performance profile allows.
    pub profile_tiers: std::collections::BTreeMap<String, Tier>,
}

impl Default for AiRouterConfig {
    fn default() -> Self {
        AiRouterConfig {
            default_profile: "balanced".into(),
            ask_performance_mode: true,
            performance_mode_check_secs: 10,
            failure_threshold: 3,
            open_secs: 30,
            trial_timeout_secs: 30,
            half_life_secs: 300,
            unknown_latency_ms: 1_000,
            max_fallbacks: 3,
            decision_ttl_secs: 600,
            models_cache_ms: 1_000,
            profile_tiers: [
                ("battery".to_string(), Tier::Small),
                ("balanced".to_string(), Tier::Medium),
                ("quality".to_string(), Tier::Large),
            ]
            .into_iter()
            .collect(),
        }
    }
}

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

fn capability(n: i32) -> Result<Capability, Status> {
    match Capability::try_from(n) {
        Ok(Capability::Unspecified) | Err(_) => Err(Status::invalid(
            "capability",
            "must be CAPABILITY_CHAT, CAPABILITY_COMPLETION or CAPABILITY_EMBEDDING",
        )),
        Ok(c) => Ok(c),
    }
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// What a Route asks, as every candidate model is judged against it.
struct Ask<'a> {
    req: &'a RouteRequest,
    cap: Capability,
    profile: &'a Profile,
    budget: Option<Duration>,
    now: SystemTime,
}

/// The profile and its largest tier a request is routed under.
struct Profile {
    name: String,
    max_tier: Tier,
    source: &'static str,
    /// performance-mode's latency budget for the profile, used when the request has none.
    latency_budget: Option<Duration>,
    /// performance-mode's cost ceiling (input + output micros per million tokens).
    max_cost_micros: Option<u64>,
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

    fn health(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelHealth>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every model of `cap`, from model-management (cached briefly).
    async fn models(&self, cap: Capability) -> Result<Arc<Vec<mm::Model>>, Status> {
        if let Some(m) = self.models.get(&(cap as i32)) {
            return Ok(m);
        }
        let client = mm::ModelManagementClient::new(self.ctx.client()?.clone());
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let page = client
                .list(
                    mm::ListRequest {
                        capabilities: vec![cap as i32],
                        provider_id: String::new(),
                        page_size: 500,
                        page_token: token,
                    },
                    &CallOptions::timeout(Duration::from_secs(2)),
                )
                .await
                .map_err(|e| Status {
                    message: format!("model-management: {}", e.message),
                    ..e
                })?;
            out.extend(page.models);
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let out = Arc::new(out);
        self.models.insert(cap as i32, out.clone());
        Ok(out)
    }

    /// Whether performance-mode is served (`$SRV.PING.performance_mode`), checked at most
    /// every `performance_mode_check_secs`.
    async fn performance_mode_served(&self) -> bool {
        if !self.config.ask_performance_mode {
            return false;
        }
        let every = Duration::from_secs(self.config.performance_mode_check_secs);
        if let Some((at, served)) = *self
            .performance_mode
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < every
        {
            return served;
        }
        let served = match self.ctx.client() {
            Ok(c) => tokio::time::timeout(
                Duration::from_millis(250),
                c.nats()
                    .request("$SRV.PING.performance_mode", bytes::Bytes::new()),
            )
            .await
            .is_ok_and(|r| r.is_ok_and(|m| m.status.is_none())),
            Err(_) => false,
        };
        *self
            .performance_mode
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), served));
        served
    }

    /// The profile `req` is routed under: its own override, the player's from
    /// performance-mode (when served), else the configured default.
    async fn profile(&self, req: &RouteRequest) -> Result<Profile, Status> {
        let named = |name: &str, source: &'static str, field: &str| {
            self.config
                .profile_tiers
                .get(name)
                .map(|t| Profile {
                    name: name.to_string(),
                    max_tier: *t,
                    source,
                    latency_budget: None,
                    max_cost_micros: None,
                })
                .ok_or_else(|| {
                    Status::invalid(
                        field,
                        format!(
                            "unknown profile {name:?}; known: {:?}",
                            self.config.profile_tiers.keys().collect::<Vec<_>>()
                        ),
                    )
                })
        };
        if !req.profile.is_empty() {
            return named(&req.profile, "request", "profile");
        }
        if !req.player_id.is_empty() && self.performance_mode_served().await {
            let asked = pm::PerformanceModeClient::new(self.ctx.client()?.clone())
                .get(
                    pm::GetRequest {
                        player_id: req.player_id.clone(),
                    },
                    &CallOptions::timeout(Duration::from_millis(500)),
                )
                .await;
            match asked {
                Ok(r) => {
                    let profile = r.mode.and_then(|m| m.profile).unwrap_or_default();
                    let max_tier = match pm::ModelTier::try_from(profile.max_model_tier) {
                        Ok(pm::ModelTier::Small) => Some(Tier::Small),
                        Ok(pm::ModelTier::Medium) => Some(Tier::Medium),
                        Ok(pm::ModelTier::Large) => Some(Tier::Large),
                        _ => None,
                    };
                    if let Some(max_tier) = max_tier {
                        return Ok(Profile {
                            name: profile.name,
                            max_tier,
                            source: "performance-mode",
                            latency_budget: profile
                                .ai_latency_budget
                                .and_then(|d| Duration::try_from(d).ok())
                                .filter(|d| !d.is_zero()),
                            max_cost_micros: Some(profile.ai_max_cost_micros_per_million_tokens)
                                .filter(|c| *c > 0),
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "performance-mode did not answer; using the default profile")
                }
            }
        }
        named(&self.config.default_profile, "default", "profile")
    }

    /// Whether model `m` may serve `ask` (else why not) and, if it may, its score and the
    /// factors that make it up. `expected` is its expected latency.
    fn judge(
        &self,
        ask: &Ask<'_>,
        m: &mm::Model,
        spec: &mm::ModelSpec,
        h: &ModelHealth,
        expected: Duration,
    ) -> Result<(f64, Vec<String>), String> {
        let tier = Tier::from_model(spec.tier);
        let cost = spec.cost.clone().unwrap_or_default();
        let micros = (cost.input_micros_per_million_tokens + cost.output_micros_per_million_tokens)
            .max(0) as u64;
        let reason = if spec.disabled || m.status == mm::ModelStatus::Disabled as i32 {
            Some("disabled".to_string())
        } else if ask.req.exclude_model_ids.contains(&m.model_id) {
            Some("excluded by the request".to_string())
        } else if ask.req.required_context > 0
            && spec.context_length > 0
            && spec.context_length < ask.req.required_context
        {
            Some(format!(
                "context {} below the {} needed",
                spec.context_length, ask.req.required_context
            ))
        } else if tier > ask.profile.max_tier {
            Some(format!("tier above profile {}", ask.profile.name))
        } else if ask.profile.max_cost_micros.is_some_and(|c| micros > c) {
            Some(format!(
                "cost {micros} micros per million tokens above profile {}'s ceiling",
                ask.profile.name
            ))
        } else if let Some(b) = h.blocked() {
            Some(b.to_string())
        } else if ask.budget.is_some_and(|b| expected > b) {
            Some(format!(
                "over latency budget ({} ms expected)",
                expected.as_millis()
            ))
        } else {
            None
        };
        if let Some(r) = reason {
            return Err(r);
        }
        let micros = micros as f64;
        let f_latency = 1.0 / (1.0 + expected.as_secs_f64());
        let f_cost = 1.0 / (1.0 + micros / 1e6);
        let f_rel = 1.0 - h.error_rate(ask.now, self.tuning.half_life);
        let f_tier = 1.0 - 0.2 * f64::from(ask.profile.max_tier.rank() - tier.rank());
        let mut score = 0.35 * f_latency + 0.25 * f_cost + 0.25 * f_rel + 0.15 * f_tier;
        let mut factors = vec![
            format!("latency: {f_latency:.3}"),
            format!("cost: {f_cost:.3}"),
            format!("reliability: {f_rel:.3}"),
            format!("tier: {f_tier:.3}"),
        ];
        let mut bonus = |v: f64, why: &str| {
            score += v;
            factors.push(format!("{why}: {v:+.1}"));
        };
        if ask.req.preferred_model_id == m.model_id {
            bonus(1.0, "preferred");
        }
        if m.default_for.contains(&(ask.cap as i32)) {
            bonus(0.2, "default");
        }
        if m.status == mm::ModelStatus::Degraded as i32 {
            bonus(-0.2, "degraded");
        }
        if h.state() == CircuitState::HalfOpen {
            bonus(-0.2, "half-open");
        }
        if m.status == mm::ModelStatus::Unavailable as i32 {
            bonus(-0.5, "last probe failed");
        }
        if spec.provider_id == "offline" {
            bonus(-1.0, "offline provider (last resort)");
        }
        Ok((score, factors))
    }

    /// Scores every model of the request's capability; returns the decision and the
    /// candidates (eligible best first, then the excluded), without recording anything.
    async fn decide(&self, req: &RouteRequest) -> Result<(RouteResponse, Vec<Candidate>), Status> {
        let cap = capability(req.capability)?;
        if !req.player_id.is_empty() {
            validate::player_id(&req.player_id, "player_id")?;
        }
        let profile = self.profile(req).await?;
        let models = self.models(cap).await?;
        let now = self.ctx.clock.now();
        let budget = req
            .latency_budget
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .or(profile.latency_budget);
        let mut eligible: Vec<(Candidate, String)> = Vec::new();
        let mut excluded: Vec<Candidate> = Vec::new();
        let ask = Ask {
            req,
            cap,
            profile: &profile,
            budget,
            now,
        };
        {
            let mut health = self.health();
            for m in models.iter() {
                let spec = m.spec.clone().unwrap_or_default();
                let h = health.entry(m.model_id.clone()).or_default();
                h.tick(now, &self.tuning);
                let expected = h
                    .latency()
                    .or_else(|| m.last_latency.and_then(|d| Duration::try_from(d).ok()))
                    .unwrap_or(Duration::from_millis(self.config.unknown_latency_ms));
                let mut c = Candidate {
                    model_id: m.model_id.clone(),
                    eligible: false,
                    score: 0.0,
                    excluded_reason: String::new(),
                    score_factors: Vec::new(),
                    expected_latency: duration(expected),
                    circuit: h.state() as i32,
                };
                match self.judge(&ask, m, &spec, h, expected) {
                    Err(reason) => {
                        c.excluded_reason = reason;
                        excluded.push(c);
                        continue;
                    }
                    Ok((score, factors)) => {
                        c.score = score;
                        c.score_factors = factors;
                    }
                }
                c.eligible = true;
                eligible.push((c, spec.provider_id));
            }
        }
        eligible.sort_by(|a, b| {
            b.0.score
                .total_cmp(&a.0.score)
                .then_with(|| a.0.model_id.cmp(&b.0.model_id))
        });
        excluded.sort_by(|a, b| a.model_id.cmp(&b.model_id));
        let Some((best, provider_id)) = eligible.first().cloned() else {
            let why: Vec<String> = excluded
                .iter()
                .map(|c| format!("{}: {}", c.model_id, c.excluded_reason))
                .collect();
            return Err(Status::with_field(
                Code::FailedPrecondition,
                "capability",
                format!(
                    "no eligible model for {} under profile {}{}",
                    cap.as_str_name(),
                    profile.name,
                    if why.is_empty() {
                        " (none registered)".to_string()
                    } else {
                        format!(" ({})", why.join("; "))
                    }
                ),
            ));
        };
        let decision = RouteResponse {
            decision_id: new_id("rte"),
            model_id: best.model_id.clone(),
            provider_id,
            fallback_model_ids: eligible
                .iter()
                .skip(1)
                .take(self.config.max_fallbacks)
                .map(|(c, _)| c.model_id.clone())
                .collect(),
            reason: format!(
                "best of {} eligible {} models under profile {} ({}); score {:.3}",
                eligible.len(),
                cap.as_str_name()
                    .trim_start_matches("CAPABILITY_")
                    .to_lowercase(),
                profile.name,
                profile.source,
                best.score
            ),
        };
        let mut candidates: Vec<Candidate> = eligible.into_iter().map(|(c, _)| c).collect();
        candidates.extend(excluded);
        Ok((decision, candidates))
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
