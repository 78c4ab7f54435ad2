//! The performance profile a Route is routed under, and so its largest model tier, latency
//! budget and cost ceiling: the request's own override, else the player's from
//! performance-mode (asked over NATS only while `$SRV.PING.performance_mode` answers, that
//! answer kept `performance_mode_check_secs`), else the configured default.

use std::time::Duration;

use aicore_proto::aicore::ai_router::v1::RouteRequest;
use aicore_proto::aicore::performance_mode::v1 as pm;
use aicore_proto::{CallOptions, Status};

use super::{AiRouter, Tier};

/// The profile and its largest tier a request is routed under.
pub(super) struct Profile {
    /// Its name, a key of `profile_tiers`.
    pub(super) name: String,
    /// The largest model tier it allows.
    pub(super) max_tier: Tier,
    /// Where it came from: `request`, `performance-mode` or `default`.
    pub(super) source: &'static str,
    /// performance-mode's latency budget for the profile, used when the request has none.
    pub(super) latency_budget: Option<Duration>,
    /// performance-mode's cost ceiling (input + output micros per million tokens).
    pub(super) max_cost_micros: Option<u64>,
}

impl AiRouter {
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
    pub(super) async fn profile(&self, req: &RouteRequest) -> Result<Profile, Status> {
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
}
