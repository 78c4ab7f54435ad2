//! The configured profiles as the contract shows them, checked once at start (unique
//! names, known model tiers, frame-time targets, a default among them, sane thresholds),
//! with each profile's frame-time target for Report; and looking a profile up by name.

use std::time::Duration;

use aicore_proto::aicore::performance_mode::v1::{ModelTier, Profile};
use aicore_proto::{Code, Status};
use aicore_runtime::validate;

use super::PerformanceModeConfig;

/// Longest profile name, in characters of `[a-z0-9_.-]`.
const MAX_PROFILE_NAME: usize = 64;

/// The model tier named in configuration.
fn tier(name: &str) -> Option<ModelTier> {
    match name {
        "small" => Some(ModelTier::Small),
        "medium" => Some(ModelTier::Medium),
        "large" => Some(ModelTier::Large),
        _ => None,
    }
}

/// `ms` milliseconds as a protobuf duration; none for 0 (no limit).
fn millis(ms: u64) -> Option<prost_types::Duration> {
    (ms > 0).then(|| prost_types::Duration::try_from(Duration::from_millis(ms)).unwrap_or_default())
}

/// The frame time of `fps` frames per second.
fn frame_time(fps: u32) -> Duration {
    Duration::from_secs(1) / fps.max(1)
}

/// The profiles as the contract shows them, checked once at start.
pub(super) struct Profiles {
    /// The profiles, lightest first.
    pub(super) list: Vec<Profile>,
    /// Frame-time target per profile, same order.
    pub(super) targets: Vec<Duration>,
}

impl Profiles {
    /// Checks `config` and shows its profiles; InvalidArgument naming the setting.
    pub(super) fn from_config(config: &PerformanceModeConfig) -> Result<Self, Status> {
        let bad = |m: String| {
            Status::new(
                Code::InvalidArgument,
                format!("[domains.performance_mode] {m}"),
            )
        };
        if config.profiles.is_empty() {
            return Err(bad("profiles: at least one profile is needed".into()));
        }
        let (mut list, mut targets) = (Vec::new(), Vec::new());
        for (i, p) in config.profiles.iter().enumerate() {
            validate::slug(&p.name, "name", MAX_PROFILE_NAME)
                .map_err(|e| bad(format!("profiles[{i}].{}", e.message)))?;
            if list.iter().any(|q: &Profile| q.name == p.name) {
                return Err(bad(format!(
                    "profiles[{i}].name: {:?} appears twice",
                    p.name
                )));
            }
            let max_tier = tier(&p.max_model_tier).ok_or_else(|| {
                bad(format!(
                    "profiles[{i}].max_model_tier: {:?} is not small, medium or large",
                    p.max_model_tier
                ))
            })?;
            if p.target_fps == 0 || p.target_fps > 1000 {
                return Err(bad(format!("profiles[{i}].target_fps: must be 1 to 1000")));
            }
            targets.push(frame_time(p.target_fps));
            list.push(Profile {
                name: p.name.clone(),
                description: p.description.clone(),
                max_tokens_per_request: p.max_tokens_per_request,
                tokens_per_hour: p.tokens_per_hour,
                max_model_tier: max_tier as i32,
                world_tick_interval: millis(p.world_tick_ms),
                npc_tick_interval: millis(p.npc_tick_ms),
                ai_narration: p.ai_narration,
                target_frame_time: prost_types::Duration::try_from(frame_time(p.target_fps)).ok(),
                ai_latency_budget: millis(p.ai_latency_budget_ms),
                ai_max_cost_micros_per_million_tokens: p.ai_max_cost_micros_per_million_tokens,
            });
        }
        if !list.iter().any(|p| p.name == config.default_profile) {
            return Err(bad(format!(
                "default_profile: {:?} is not one of the profiles",
                config.default_profile
            )));
        }
        let ratios_ok = config.step_down_above > 1.0
            && config.step_down_above.is_finite()
            && config.step_up_below > 0.0
            && config.step_up_below < 1.0
            && (0.0..=1.0).contains(&config.low_battery);
        if !ratios_ok {
            return Err(bad(
                "step_down_above must be > 1, step_up_below in (0, 1), low_battery in [0, 1]"
                    .into(),
            ));
        }
        Ok(Profiles { list, targets })
    }

    /// The index of the profile named `name`.
    pub(super) fn index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|p| p.name == name)
    }

    /// The profile named `name`, or InvalidArgument naming `field` with the known names.
    pub(super) fn named(&self, name: &str, field: &str) -> Result<usize, Status> {
        self.index(name).ok_or_else(|| {
            Status::invalid(
                field,
                format!(
                    "unknown profile {name:?}; known: {:?}",
                    self.list
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                ),
            )
        })
    }
}
