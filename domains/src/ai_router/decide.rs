//! Route's decision: every model of the capability (model-management's list, cached
//! briefly) judged against what the request asks (the profile's tier and cost ceiling,
//! the context needed, the latency budget, the circuits), the eligible ranked by score
//! with the factors Explain shows, the best chosen and the next ones its fallback chain.
//! Deciding records nothing; Route and Explain do what they need with the result.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aicore_proto::aicore::ai_router::v1::{
    Candidate, Capability, CircuitState, RouteRequest, RouteResponse,
};
use aicore_proto::aicore::model_management::v1 as mm;
use aicore_proto::{CallOptions, Code, Status};
use aicore_runtime::{new_id, validate};

use super::health::ModelHealth;
use super::profile::Profile;
use super::{AiRouter, Tier, capability, duration};

/// What a Route asks, as every candidate model is judged against it.
struct Ask<'a> {
    req: &'a RouteRequest,
    cap: Capability,
    profile: &'a Profile,
    budget: Option<Duration>,
    now: SystemTime,
}

impl AiRouter {
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
    pub(super) async fn decide(
        &self,
        req: &RouteRequest,
    ) -> Result<(RouteResponse, Vec<Candidate>), Status> {
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
        let ask = Ask {
            req,
            cap,
            profile: &profile,
            budget,
            now,
        };
        let (mut eligible, mut excluded) = self.judge_all(&ask, &models);
        eligible.sort_by(|a, b| {
            b.0.score
                .total_cmp(&a.0.score)
                .then_with(|| a.0.model_id.cmp(&b.0.model_id))
        });
        excluded.sort_by(|a, b| a.model_id.cmp(&b.model_id));
        let Some((best, provider_id)) = eligible.first().cloned() else {
            return Err(no_eligible(&ask, &excluded));
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

    /// Judges each of `models` against `ask` under the health lock (each model's averages
    /// and circuit brought up to `ask.now` first): the eligible candidates with their
    /// provider, and the excluded with their reason, both unsorted.
    fn judge_all(
        &self,
        ask: &Ask<'_>,
        models: &[mm::Model],
    ) -> (Vec<(Candidate, String)>, Vec<Candidate>) {
        let mut eligible: Vec<(Candidate, String)> = Vec::new();
        let mut excluded: Vec<Candidate> = Vec::new();
        let mut health = self.health();
        for m in models.iter() {
            let spec = m.spec.clone().unwrap_or_default();
            let h = health.entry(m.model_id.clone()).or_default();
            h.tick(ask.now, &self.tuning);
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
            match self.judge(ask, m, &spec, h, expected) {
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
        (eligible, excluded)
    }
}

/// FailedPrecondition when no model is eligible for `ask`, naming each excluded model and
/// why (`excluded`, sorted).
fn no_eligible(ask: &Ask<'_>, excluded: &[Candidate]) -> Status {
    let why: Vec<String> = excluded
        .iter()
        .map(|c| format!("{}: {}", c.model_id, c.excluded_reason))
        .collect();
    Status::with_field(
        Code::FailedPrecondition,
        "capability",
        format!(
            "no eligible model for {} under profile {}{}",
            ask.cap.as_str_name(),
            ask.profile.name,
            if why.is_empty() {
                " (none registered)".to_string()
            } else {
                format!(" ({})", why.join("; "))
            }
        ),
    )
}
