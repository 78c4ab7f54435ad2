//! ai-router's configuration (`[domains.ai_router]`): the default profile and the largest
//! model [`Tier`] each profile allows, when to ask performance-mode, the circuits' and
//! averages' tuning, fallbacks, and how long decisions and model lists are kept.

use aicore_proto::aicore::model_management::v1 as mm;

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
    /// The tier of a model-management model tier (an unknown one: small).
    pub(super) fn from_model(t: i32) -> Tier {
        match mm::ModelTier::try_from(t) {
            Ok(mm::ModelTier::Large) => Tier::Large,
            Ok(mm::ModelTier::Medium) => Tier::Medium,
            _ => Tier::Small,
        }
    }

    /// Its rank, small lowest.
    pub(super) fn rank(self) -> i32 {
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
