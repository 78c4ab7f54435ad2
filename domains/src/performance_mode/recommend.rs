//! Report's recommendation: a client's figures checked (frame times, network latency,
//! battery, device class), and the profile to recommend from them and the profile the
//! client is on now, with every rule that decided or held back as a reason. Pure: the
//! handler stores the outcome.

use std::time::Duration;

use aicore_proto::Status;
use aicore_proto::aicore::performance_mode::v1::ReportRequest;

use super::PerformanceModeConfig;
use super::profiles::Profiles;

/// Longest `device_class`, in characters.
const MAX_DEVICE_CLASS_CHARS: usize = 64;
/// Longest duration a Report figure may hold; more is a client's bug, not a measurement.
const MAX_FIGURE: Duration = Duration::from_secs(60);

/// The figures of a Report, checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Figures {
    p95: Duration,
    network_p50: Option<Duration>,
    battery: Option<f64>,
}

/// A Report figure: none when absent; InvalidArgument naming `field` when negative or
/// longer than [`MAX_FIGURE`].
fn figure(d: &Option<prost_types::Duration>, field: &str) -> Result<Option<Duration>, Status> {
    let Some(d) = d else {
        return Ok(None);
    };
    let d = Duration::try_from(*d)
        .map_err(|_| Status::invalid(field, "must be a non-negative duration"))?;
    if d > MAX_FIGURE {
        return Err(Status::invalid(
            field,
            format!("must be at most {}s", MAX_FIGURE.as_secs()),
        ));
    }
    Ok(Some(d))
}

impl Figures {
    /// The figures of `req`, checked; InvalidArgument naming the field.
    pub(super) fn from_request(req: &ReportRequest) -> Result<Self, Status> {
        let p95 = figure(&req.frame_time_p95, "frame_time_p95")?
            .ok_or_else(|| Status::invalid("frame_time_p95", "is required"))?;
        if p95.is_zero() {
            return Err(Status::invalid("frame_time_p95", "must be positive"));
        }
        if let Some(p50) = figure(&req.frame_time_p50, "frame_time_p50")?
            && p50 > p95
        {
            return Err(Status::invalid(
                "frame_time_p50",
                "must not exceed frame_time_p95",
            ));
        }
        let network_p50 = figure(&req.network_latency_p50, "network_latency_p50")?;
        figure(&req.window, "window")?;
        if let Some(b) = req.battery_level
            && !(0.0..=1.0).contains(&b)
        {
            return Err(Status::invalid("battery_level", "must be between 0 and 1"));
        }
        if req.device_class.chars().count() > MAX_DEVICE_CLASS_CHARS
            || req.device_class.chars().any(char::is_control)
        {
            return Err(Status::invalid(
                "device_class",
                format!(
                    "must be at most {MAX_DEVICE_CLASS_CHARS} characters without control characters"
                ),
            ));
        }
        Ok(Figures {
            p95,
            network_p50,
            battery: req.battery_level,
        })
    }
}

/// `d` in milliseconds, for a reason.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The profile (index) to recommend to a client on profile `current`, and why.
pub(super) fn recommend(
    profiles: &Profiles,
    config: &PerformanceModeConfig,
    current: usize,
    f: Figures,
) -> (usize, Vec<String>) {
    let name = |i: usize| profiles.list[i].name.as_str();
    if let Some(b) = f.battery
        && b < config.low_battery
    {
        return (
            0,
            vec![format!(
                "battery {:.0}% below {:.0}%: the lightest profile, {}",
                b * 100.0,
                config.low_battery * 100.0,
                name(0)
            )],
        );
    }
    let target = profiles.targets[current];
    if f.p95.as_secs_f64() > target.as_secs_f64() * config.step_down_above {
        if current == 0 {
            return (
                0,
                vec![format!(
                    "p95 frame time {} above {} target, already on the lightest profile",
                    ms(f.p95),
                    ms(target)
                )],
            );
        }
        return (
            current - 1,
            vec![format!(
                "p95 frame time {} above {} target of {}: one profile lighter",
                ms(f.p95),
                ms(target),
                name(current)
            )],
        );
    }
    let mut reasons = vec![format!(
        "p95 frame time {} within {} target of {}",
        ms(f.p95),
        ms(target),
        name(current)
    )];
    if let Some(richer) = (current + 1 < profiles.list.len()).then_some(current + 1) {
        let room = profiles.targets[richer].as_secs_f64() * config.step_up_below;
        if f.p95.as_secs_f64() < room {
            let slow_net = f
                .network_p50
                .filter(|n| n.as_millis() > u128::from(config.high_network_latency_ms));
            if let Some(n) = slow_net {
                reasons.push(format!(
                    "room for {}, but network p50 {} above {} ms",
                    name(richer),
                    ms(n),
                    config.high_network_latency_ms
                ));
            } else {
                reasons.push(format!(
                    "p95 frame time below {} ({:.0}% of {} target): one profile richer",
                    ms(Duration::from_secs_f64(room)),
                    config.step_up_below * 100.0,
                    name(richer)
                ));
                return (richer, reasons);
            }
        }
    }
    (current, reasons)
}
