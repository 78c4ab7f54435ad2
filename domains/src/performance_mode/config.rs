//! performance-mode's configuration (`[domains.performance_mode]`): the profiles, lightest
//! first, each with its AI budget, refresh rates and frame-time target, the default
//! profile, and the thresholds of Report's recommendation. `profiles` checks it once at
//! start.

/// One profile (`[[domains.performance_mode.profiles]]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileConfig {
    /// Its name, 1–64 characters of `[a-z0-9_.-]`, unique.
    pub name: String,
    /// One line for players and tools.
    pub description: String,
    /// Largest AI output per request, in tokens.
    pub max_tokens_per_request: u32,
    /// AI tokens a player may use per real hour; 0 for no limit.
    pub tokens_per_hour: u32,
    /// Largest model tier AI requests may use: `small`, `medium` or `large`.
    pub max_model_tier: String,
    /// How often the client should refresh world state, in milliseconds.
    pub world_tick_ms: u64,
    /// How often the client should refresh NPC state, in milliseconds.
    pub npc_tick_ms: u64,
    /// Whether to stream AI narration (otherwise templates only).
    pub ai_narration: bool,
    /// Frames per second the profile targets on the client (its frame-time target).
    pub target_fps: u32,
    /// The AI router's latency budget for requests under this profile when the caller
    /// gives none, in milliseconds; 0 for no limit.
    pub ai_latency_budget_ms: u64,
    /// The dearest model the AI router may choose, in micro-units per million tokens
    /// (input + output price); 0 for no ceiling.
    pub ai_max_cost_micros_per_million_tokens: u64,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            name: String::new(),
            description: String::new(),
            max_tokens_per_request: 512,
            tokens_per_hour: 0,
            max_model_tier: "medium".into(),
            world_tick_ms: 1000,
            npc_tick_ms: 2000,
            ai_narration: true,
            target_fps: 60,
            ai_latency_budget_ms: 0,
            ai_max_cost_micros_per_million_tokens: 0,
        }
    }
}

/// Configuration of performance-mode (`[domains.performance_mode]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerformanceModeConfig {
    /// The profile players follow until they choose, unless SetDefault set another.
    pub default_profile: String,
    /// Battery level (0–1) below which Report recommends the lightest profile.
    pub low_battery: f64,
    /// Report recommends one profile lighter when the p95 frame time exceeds the current
    /// target by this factor (> 1).
    pub step_down_above: f64,
    /// Report recommends one profile richer when the p95 frame time is below the richer
    /// profile's target times this factor (0–1): headroom, so it does not flap.
    pub step_up_below: f64,
    /// A network p50 latency above this (milliseconds) holds back a step up.
    pub high_network_latency_ms: u64,
    /// Page size of Profiles when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of Profiles.
    pub max_page_size: u32,
    /// The profiles, lightest first.
    pub profiles: Vec<ProfileConfig>,
}

impl Default for PerformanceModeConfig {
    fn default() -> Self {
        PerformanceModeConfig {
            default_profile: "balanced".into(),
            low_battery: 0.2,
            step_down_above: 1.15,
            step_up_below: 0.7,
            high_network_latency_ms: 150,
            default_page_size: 50,
            max_page_size: 100,
            profiles: vec![
                ProfileConfig {
                    name: "battery".into(),
                    description: "Small models, short answers, slow ticks, no narration, 30 fps."
                        .into(),
                    max_tokens_per_request: 256,
                    tokens_per_hour: 20_000,
                    max_model_tier: "small".into(),
                    world_tick_ms: 2000,
                    npc_tick_ms: 5000,
                    ai_narration: false,
                    target_fps: 30,
                    ai_latency_budget_ms: 2000,
                    ai_max_cost_micros_per_million_tokens: 1_000_000,
                },
                ProfileConfig {
                    name: "balanced".into(),
                    description: "Medium models, narration on, 60 fps.".into(),
                    max_tokens_per_request: 512,
                    tokens_per_hour: 60_000,
                    max_model_tier: "medium".into(),
                    world_tick_ms: 1000,
                    npc_tick_ms: 2000,
                    ai_narration: true,
                    target_fps: 60,
                    ai_latency_budget_ms: 5000,
                    ai_max_cost_micros_per_million_tokens: 5_000_000,
                },
                ProfileConfig {
                    name: "quality".into(),
                    description: "Any model, long answers, fast ticks, 60 fps.".into(),
                    max_tokens_per_request: 1024,
                    tokens_per_hour: 0,
                    max_model_tier: "large".into(),
                    world_tick_ms: 500,
                    npc_tick_ms: 1000,
                    ai_narration: true,
                    target_fps: 60,
                    ai_latency_budget_ms: 0,
                    ai_max_cost_micros_per_million_tokens: 0,
                },
            ],
        }
    }
}
