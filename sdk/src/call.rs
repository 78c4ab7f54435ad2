//! Unary calls: the idempotency key a call carries, its attempts within the deadline,
//! and when an attempt is sent again.

use std::time::{Duration, Instant};

use aicore_proto::{CallOptions, Code, IdempotencyKey, MethodInfo, Status};
use bytes::Bytes;

use crate::breaker::attempt_outcome;
use crate::{Client, new_idempotency_key, request_headers};

/// `body` with the idempotency key `options` asks for (see [`IdempotencyKey`]).
fn keyed_body(method: &MethodInfo, body: Bytes, options: &CallOptions) -> Bytes {
    match &options.idempotency_key {
        IdempotencyKey::AsIs => body,
        IdempotencyKey::Fresh if method.idempotency_key != 0 => {
            method.with_idempotency_key(body, &new_idempotency_key())
        }
        IdempotencyKey::Fresh => body,
        IdempotencyKey::Use(key) => method.with_idempotency_key(body, key),
    }
}

impl Client {
    /// A unary call: attempts until one is answered, the error is final, or the deadline
    /// leaves no room for another.
    pub(crate) async fn call_unary(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<Bytes, Status> {
        let deadline = self.deadline(method, options);
        let body = keyed_body(method, body, options);
        // Sent again after it may have been delivered only when provably safe: a read, or a
        // write carrying its key.
        let attempts = if method.retry_safe(&body) {
            self.config.max_attempts.max(1)
        } else {
            1
        };
        // Attempts that may have been delivered; sends that found no responders reached
        // no one and do not count.
        let mut attempt = 0;
        let mut retries = 0;
        let mut unserved_since: Option<Instant> = None;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Status::new(
                    Code::DeadlineExceeded,
                    format!("deadline passed before {} answered", method.subject),
                ));
            }
            self.breaker_check(method.subject)?;
            let this_try = if attempt < attempts {
                remaining.min(self.config.attempt_timeout)
            } else {
                remaining
            };
            let (result, unserved) = self.attempt(method, &body, options, this_try).await;
            let again = match &result {
                Err(_) if unserved => {
                    attempt -= 1;
                    let since = *unserved_since.get_or_insert_with(Instant::now);
                    since.elapsed() < self.config.outage_grace
                }
                Err(s) => s.is_retryable() && attempt < attempts,
                Ok(_) => false,
            };
            match result {
                Err(s) if again => {
                    let pause = self.backoff(retries);
                    retries += 1;
                    if Instant::now() + pause >= deadline {
                        return Err(s);
                    }
                    tracing::debug!(subject = method.subject, attempt, error = %s, "retrying");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// One attempt allowed `this_try`, recorded in the subject's breaker: its result, and
    /// whether it found no responders (it reached no one).
    async fn attempt(
        &self,
        method: &'static MethodInfo,
        body: &Bytes,
        options: &CallOptions,
        this_try: Duration,
    ) -> (Result<Bytes, Status>, bool) {
        // The service is told this attempt's deadline, not the call's: past it the
        // caller no longer waits for this attempt, so neither should the work.
        let request = async_nats::Request::new()
            .payload(body.clone())
            .headers(request_headers(options, this_try))
            .timeout(Some(this_try));
        let reply = self.nats.send_request(method.subject, request).await;
        let outcome = attempt_outcome(&self.config, method.subject, reply, this_try);
        self.breaker_record(method.subject, outcome.health);
        (outcome.result, outcome.unserved)
    }
}
