//! What ai-router knows of each model's recent behaviour: decaying averages of latency
//! and error rate, a bounded list of recent outcomes for windowed statistics, and a
//! circuit breaker. All in memory: it is live evidence, rebuilt by traffic after a
//! restart (each replica of the router keeps its own).
//!
//! The circuit: `failure_threshold` failures in a row open it; while open the model is
//! skipped. After `open_secs` it is half-open: the next Route may choose it as a trial
//! (one at a time; a trial not reported within `trial_timeout_secs` frees the slot). A
//! success closes it, a failure opens it again. Time is the domain clock's, so tests
//! move it by hand.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use aicore_proto::aicore::ai_router::v1::CircuitState;

/// Outcomes kept per model for statistics.
const MAX_SAMPLES: usize = 4096;

/// Circuit and averaging parameters.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Failures in a row that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before a trial.
    pub open: Duration,
    /// How long a trial may go unreported before another is allowed.
    pub trial_timeout: Duration,
    /// Half-life of the decaying averages.
    pub half_life: Duration,
}

/// One reported call.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: SystemTime,
    pub success: bool,
    pub latency: Duration,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: SystemTime },
    HalfOpen { trial_since: Option<SystemTime> },
}

/// One model's live record.
#[derive(Debug, Clone)]
pub struct ModelHealth {
    latency_ms: Option<f64>,
    error_rate: f64,
    last: Option<SystemTime>,
    circuit: Circuit,
    pub samples: VecDeque<Sample>,
    pub routed: VecDeque<SystemTime>,
}

impl Default for ModelHealth {
    fn default() -> Self {
        ModelHealth {
            latency_ms: None,
            error_rate: 0.0,
            last: None,
            circuit: Circuit::Closed { failures: 0 },
            samples: VecDeque::new(),
            routed: VecDeque::new(),
        }
    }
}

/// The weight of the newest observation: at least a tenth, more the longer since the
/// previous one (an observation after a half-life of quiet counts half).
fn weight(last: Option<SystemTime>, now: SystemTime, half_life: Duration) -> f64 {
    let Some(last) = last else { return 1.0 };
    let dt = now.duration_since(last).unwrap_or_default().as_secs_f64();
    let h = half_life.as_secs_f64().max(1e-3);
    (1.0 - 0.5f64.powf(dt / h)).max(0.1)
}

impl ModelHealth {
    /// Moves an open circuit whose time is up to half-open, and frees a trial slot held
    /// too long.
    pub fn tick(&mut self, now: SystemTime, t: &Tuning) {
        match self.circuit {
            Circuit::Open { until } if now >= until => {
                self.circuit = Circuit::HalfOpen { trial_since: None }
            }
            Circuit::HalfOpen {
                trial_since: Some(since),
            } if now.duration_since(since).unwrap_or_default() >= t.trial_timeout => {
                self.circuit = Circuit::HalfOpen { trial_since: None }
            }
            _ => {}
        }
    }

    /// The circuit's state as the contract names it.
    pub fn state(&self) -> CircuitState {
        match self.circuit {
            Circuit::Closed { .. } => CircuitState::Closed,
            Circuit::Open { .. } => CircuitState::Open,
            Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// When an open circuit half-opens.
    pub fn retry_at(&self) -> Option<SystemTime> {
        match self.circuit {
            Circuit::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Why the model may not be routed to now, if it may not.
    pub fn blocked(&self) -> Option<&'static str> {
        match self.circuit {
            Circuit::Open { .. } => Some("circuit open"),
            Circuit::HalfOpen {
                trial_since: Some(_),
            } => Some("circuit half-open: a trial call is in flight"),
            _ => None,
        }
    }

    /// Marks the model chosen; a half-open circuit's trial starts.
    pub fn chosen(&mut self, now: SystemTime) {
        if let Circuit::HalfOpen { trial_since: None } = self.circuit {
            self.circuit = Circuit::HalfOpen {
                trial_since: Some(now),
            };
        }
        self.routed.push_back(now);
        if self.routed.len() > MAX_SAMPLES {
            self.routed.pop_front();
        }
    }

    /// Takes a reported outcome.
    pub fn report(&mut self, s: Sample, t: &Tuning) {
        let w = weight(self.last, s.at, t.half_life);
        self.last = Some(s.at);
        self.error_rate = (1.0 - w) * self.error_rate + w * if s.success { 0.0 } else { 1.0 };
        if s.success {
            let ms = s.latency.as_secs_f64() * 1000.0;
            self.latency_ms = Some(match self.latency_ms {
                Some(l) => (1.0 - w) * l + w * ms,
                None => ms,
            });
        }
        self.circuit = match (self.circuit, s.success) {
            (_, true) => Circuit::Closed { failures: 0 },
            (Circuit::Closed { failures }, false) if failures + 1 < t.failure_threshold.max(1) => {
                Circuit::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => Circuit::Open {
                until: s.at + t.open,
            },
        };
        self.samples.push_back(s);
        if self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The decaying mean latency of successful calls, if any was reported.
    pub fn latency(&self) -> Option<Duration> {
        self.latency_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    }

    /// The error rate, decayed toward zero by the time since the last report.
    pub fn error_rate(&self, now: SystemTime, half_life: Duration) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        let dt = now.duration_since(last).unwrap_or_default().as_secs_f64();
        self.error_rate * 0.5f64.powf(dt / half_life.as_secs_f64().max(1e-3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning() -> Tuning {
        Tuning {
            failure_threshold: 3,
            open: Duration::from_secs(30),
            trial_timeout: Duration::from_secs(10),
            half_life: Duration::from_secs(60),
        }
    }

    fn sample(at: SystemTime, success: bool, ms: u64) -> Sample {
        Sample {
            at,
            success,
            latency: Duration::from_millis(ms),
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    #[test]
    fn failures_in_a_row_open_the_circuit_which_half_opens_for_one_trial() {
        let t = tuning();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut h = ModelHealth::default();
        h.report(sample(t0, false, 0), &t);
        h.report(sample(t0, true, 10), &t);
        h.report(sample(t0, false, 0), &t);
        h.report(sample(t0, false, 0), &t);
        assert_eq!(
            h.state(),
            CircuitState::Closed,
            "a success in between resets the count"
        );
        h.report(sample(t0, false, 0), &t);
        assert_eq!(h.state(), CircuitState::Open);
        assert_eq!(h.blocked(), Some("circuit open"));
        h.tick(t0 + Duration::from_secs(29), &t);
        assert_eq!(h.state(), CircuitState::Open);
        h.tick(t0 + Duration::from_secs(30), &t);
        assert_eq!((h.state(), h.blocked()), (CircuitState::HalfOpen, None));
        // One trial at a time; an unreported trial frees its slot after the timeout.
        let t1 = t0 + Duration::from_secs(30);
        h.chosen(t1);
        assert!(h.blocked().is_some());
        h.tick(t1 + Duration::from_secs(10), &t);
        assert_eq!(h.blocked(), None);
        // A failed trial opens it again; a successful one closes it.
        h.chosen(t1 + Duration::from_secs(10));
        h.report(sample(t1 + Duration::from_secs(11), false, 0), &t);
        assert_eq!(h.state(), CircuitState::Open);
        h.tick(t1 + Duration::from_secs(41), &t);
        h.chosen(t1 + Duration::from_secs(41));
        h.report(sample(t1 + Duration::from_secs(42), true, 5), &t);
        assert_eq!(h.state(), CircuitState::Closed);
    }

    #[test]
    fn averages_follow_recent_outcomes_and_the_error_rate_decays_with_quiet() {
        let t = tuning();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut h = ModelHealth::default();
        h.report(sample(t0, true, 100), &t);
        for i in 1..=20 {
            h.report(sample(t0 + Duration::from_secs(i * 60), true, 500), &t);
        }
        let l = h.latency().unwrap().as_millis();
        assert!((450..=500).contains(&l), "{l}");
        h.report(sample(t0 + Duration::from_secs(1260), false, 0), &t);
        let now = t0 + Duration::from_secs(1260);
        let e0 = h.error_rate(now, t.half_life);
        assert!(e0 > 0.3, "{e0}");
        let e1 = h.error_rate(now + Duration::from_secs(120), t.half_life);
        assert!((e1 - e0 / 4.0).abs() < 1e-9, "{e0} {e1}");
    }
}
