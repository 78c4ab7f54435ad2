//! The per-subject circuit breaker and what each attempt says about a service's health
//! (see the crate documentation: what counts against a breaker).

use std::time::{Duration, Instant};

use aicore_proto::{Code, Status};
use async_nats::Message;
use bytes::Bytes;

use crate::{Client, ClientConfig, map_request_error, reply_result};

#[derive(Default)]
pub(crate) struct Breaker {
    failures: u32,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
    open_until: Option<Instant>,
}

impl Client {
    pub(crate) fn breaker_check(&self, subject: &'static str) -> Result<(), Status> {
        let b = self.breakers.read().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = b.get(subject).and_then(|b| b.open_until) {
            let now = Instant::now();
            if until > now {
                return Err(Status::new(
                    Code::Unavailable,
                    format!("circuit open for {subject} after repeated failures"),
                )
                .with_retry_after(until - now));
            }
        }
        Ok(())
    }

    pub(crate) fn breaker_record(&self, subject: &'static str, health: Health) {
        let transport_failure = match health {
            Health::Unknown => return,
            Health::Answered => false,
            Health::Failed => true,
        };
        // The common case, a success on a healthy subject, takes only the read lock.
        if !transport_failure {
            let all = self.breakers.read().unwrap_or_else(|e| e.into_inner());
            if all
                .get(subject)
                .is_none_or(|b| b.failures == 0 && b.open_until.is_none())
            {
                return;
            }
        }
        let mut all = self.breakers.write().unwrap_or_else(|e| e.into_inner());
        let b = all.entry(subject).or_default();
        let now = Instant::now();
        if transport_failure {
            b.failures = b.failures.saturating_add(1);
            let since = *b.failing_since.get_or_insert(now);
            if b.failures >= self.config.breaker_threshold
                && now.duration_since(since) >= self.config.outage_grace
            {
                b.open_until = Some(now + self.config.breaker_cooldown);
            }
        } else {
            *b = Breaker::default();
        }
    }
}

/// What one attempt says about the health of the service it was sent to (see the module
/// documentation: what counts against a breaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// The service replied (a success or an error of its own): it is alive.
    Answered,
    /// The service is to blame: no responders, or silence for a whole reasonable attempt.
    Failed,
    /// Nothing learnt about the service: the caller's deadline cut the attempt short, or
    /// the caller's own connection or request failed.
    Unknown,
}

/// What one attempt came to: its result, the health it shows, and whether nobody served
/// the subject (nats-server's no-responders status: the request reached no one).
pub(crate) struct Outcome {
    pub(crate) result: Result<Bytes, Status>,
    pub(crate) health: Health,
    pub(crate) unserved: bool,
}

/// Reads `reply` (what came back to a request to `subject`, or the request error) once;
/// `attempt` is how long the attempt was allowed to wait.
pub(crate) fn attempt_outcome(
    config: &ClientConfig,
    subject: &str,
    reply: Result<Message, async_nats::RequestError>,
    attempt: Duration,
) -> Outcome {
    use async_nats::RequestErrorKind;
    match reply {
        Ok(msg) => {
            let unserved = msg.status == Some(async_nats::StatusCode::NO_RESPONDERS);
            let result = reply_result(&msg);
            let health = match &result {
                _ if unserved => Health::Failed,
                Err(s) if s.code == Code::DeadlineExceeded => silence_health(config, attempt),
                _ => Health::Answered,
            };
            Outcome {
                result,
                health,
                unserved,
            }
        }
        Err(e) => {
            let kind = e.kind();
            let health = match kind {
                RequestErrorKind::NoResponders => Health::Failed,
                RequestErrorKind::TimedOut => silence_health(config, attempt),
                RequestErrorKind::MaxPayloadExceeded
                | RequestErrorKind::InvalidSubject
                | RequestErrorKind::Other => Health::Unknown,
            };
            Outcome {
                result: Err(map_request_error(subject, e)),
                health,
                unserved: kind == RequestErrorKind::NoResponders,
            }
        }
    }
}

/// The health shown by an attempt that got no answer in `attempt`: a failure only when
/// the service had a reasonable time (the caller's deadline did not cut it short).
pub(crate) fn silence_health(config: &ClientConfig, attempt: Duration) -> Health {
    if attempt >= config.attempt_timeout {
        Health::Failed
    } else {
        Health::Unknown
    }
}
