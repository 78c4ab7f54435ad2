//! The per-subject circuit breaker and what each attempt says about a service's health
//! (see the crate documentation: what counts against a breaker).

use std::time::{Duration, Instant};

use aicore_proto::{Code, Status};
use async_nats::Message;

use crate::{Client, ClientConfig, reply_result};

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

/// Whether nobody served the subject (nats-server's no-responders status): the request
/// reached no one.
pub(crate) fn no_responders(reply: &Result<Message, async_nats::RequestError>) -> bool {
    match reply {
        Ok(msg) => msg.status == Some(async_nats::StatusCode::NO_RESPONDERS),
        Err(e) => e.kind() == async_nats::RequestErrorKind::NoResponders,
    }
}

/// The health an attempt shows: `reply` is what came back (or the request error),
/// `attempt` how long the attempt was allowed to wait.
pub(crate) fn attempt_health(
    config: &ClientConfig,
    reply: &Result<Message, async_nats::RequestError>,
    attempt: Duration,
) -> Health {
    use async_nats::RequestErrorKind;
    match reply {
        Ok(msg) if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) => Health::Failed,
        Ok(msg) => match reply_result(msg) {
            Err(s) if s.code == Code::DeadlineExceeded => silence_health(config, attempt),
            _ => Health::Answered,
        },
        Err(e) => match e.kind() {
            RequestErrorKind::NoResponders => Health::Failed,
            RequestErrorKind::TimedOut => silence_health(config, attempt),
            RequestErrorKind::MaxPayloadExceeded
            | RequestErrorKind::InvalidSubject
            | RequestErrorKind::Other => Health::Unknown,
        },
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
