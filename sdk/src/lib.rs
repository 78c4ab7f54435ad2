//! The AI Core client. [`Client`] implements the generated clients' [`Transport`] over
//! NATS request/reply: it puts the deadline, trace context, request id and caller in
//! headers, turns micro-protocol error replies back into [`Status`], retries calls that
//! are safe to repeat with jittered backoff inside the deadline, and keeps a
//! circuit breaker per subject so a dead service fails fast instead of eating every
//! caller's deadline. Domains use the same client for cross-domain calls, so placement
//! stays free. It does not connect or authenticate by itself: it wraps a connected
//! `async_nats::Client`.
//!
//! # What is retried
//!
//! A call that finds nobody serving its subject (no responders) reached no one: any call,
//! a write without a key too, is sent again until it has waited
//! [`ClientConfig::outage_grace`] (or its deadline comes first). That rides out a
//! service restarting or its connection reconnecting — nats-server closes connections
//! whose certificate a rotation retired, and their subscriptions are gone until the
//! client has reconnected — instead of failing every call in that blip.
//!
//! A call whose attempt may have been delivered (a timeout, Unavailable from the service)
//! is sent again only when that is provably safe ([`MethodInfo::retry_safe`]): the RPC is
//! a read (`read_only` in its proto policy), or the request carries an idempotency key,
//! so a replay returns the first reply. A write without a key is sent once: its first
//! attempt may have been applied with the reply lost, and a blind retry would apply it
//! twice or answer Conflict to a create-only write that succeeded. A caller that wants
//! such a write retried asks for a key with [`CallOptions::idempotency_key`]
//! ([`IdempotencyKey::Fresh`]): the SDK then puts one key in every attempt.
//!
//! # What counts against a breaker
//!
//! A breaker is shared by every caller of a subject, so only what proves the *service*
//! unhealthy may count toward opening it, never what one caller asked for: otherwise a
//! single client sending requests with 1 ms deadlines (or hopeless inputs) would open the
//! circuit for everyone. Per attempt:
//! - **counts**: no responders (nobody serves the subject), and an attempt that timed out
//!   although it had at least [`ClientConfig::attempt_timeout`] to get an answer — the
//!   service had a reasonable time and said nothing. A DeadlineExceeded *reply* is
//!   judged the same way: the service saying it did not finish within the attempt's
//!   deadline is silence with a receipt, and whether that reply or the caller's own
//!   timer comes first is a race of microseconds;
//! - **resets**: any other reply from the service, success or error (it is alive and
//!   answering; a refusal such as Unavailable comes back fast and eats no deadline,
//!   which is what the breaker protects);
//! - **neither**: an attempt cut short by the caller's own deadline (it had less than
//!   `attempt_timeout`), whether it timed out or the service answered DeadlineExceeded,
//!   and failures of the caller's own connection or request (max payload, a connection
//!   that is down): the caller's outcome, not the service's.
//!
//! The circuit opens after `breaker_threshold` failures in a row that have lasted at least
//! [`ClientConfig::outage_grace`]: a burst of failures inside a reconnect blip, however
//! many callers see it, does not turn the blip into a `breaker_cooldown` of refusals.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aicore_proto::{CallOptions, Code, IdempotencyKey, MethodInfo, Status, Transport};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use rand::Rng;

pub use aicore_proto as proto;

/// The protocol's headers ([`aicore_proto::headers`]) as async-nats names, built once: a
/// name given as `&str` is validated and copied at every insert and every lookup.
pub mod header_names {
    use aicore_proto::headers as h;
    use async_nats::HeaderName;

    /// [`h::TIMEOUT_MS`].
    pub const TIMEOUT_MS: HeaderName = HeaderName::from_static(h::TIMEOUT_MS);
    /// [`h::DEADLINE`].
    pub const DEADLINE: HeaderName = HeaderName::from_static(h::DEADLINE);
    /// [`h::TRACEPARENT`].
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(h::TRACEPARENT);
    /// [`h::REQUEST_ID`].
    pub const REQUEST_ID: HeaderName = HeaderName::from_static(h::REQUEST_ID);
    /// [`h::CALLER`].
    pub const CALLER: HeaderName = HeaderName::from_static(h::CALLER);
    /// [`h::CALLER_ROLES`].
    pub const CALLER_ROLES: HeaderName = HeaderName::from_static(h::CALLER_ROLES);
    /// [`h::CALLER_SESSION`].
    pub const CALLER_SESSION: HeaderName = HeaderName::from_static(h::CALLER_SESSION);
    /// [`h::CLIENT_ADDR`].
    pub const CLIENT_ADDR: HeaderName = HeaderName::from_static(h::CLIENT_ADDR);
    /// [`h::STREAM`].
    pub const STREAM: HeaderName = HeaderName::from_static(h::STREAM);
    /// [`h::STREAM_ID`].
    pub const STREAM_ID: HeaderName = HeaderName::from_static(h::STREAM_ID);
    /// [`h::REQUEST_INFO`].
    pub const REQUEST_INFO: HeaderName = HeaderName::from_static(h::REQUEST_INFO);
    /// [`h::SERVICE_ERROR`].
    pub const SERVICE_ERROR: HeaderName = HeaderName::from_static(h::SERVICE_ERROR);
    /// [`h::SERVICE_ERROR_CODE`].
    pub const SERVICE_ERROR_CODE: HeaderName = HeaderName::from_static(h::SERVICE_ERROR_CODE);
}

/// Tunables of a [`Client`]; the defaults suit a LAN appliance.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline when neither the call nor the RPC's policy sets one.
    pub default_timeout: Duration,
    /// Longest single attempt of an idempotent call, so a lost request leaves time to retry;
    /// also the least time a service must have had before its silence counts against its
    /// circuit breaker.
    pub attempt_timeout: Duration,
    /// Attempts of an idempotent call, the first included.
    pub max_attempts: u32,
    /// First retry delay; doubles each retry, with full jitter.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Consecutive failures of a service (no responders, or silence for a whole
    /// `attempt_timeout`; see the module documentation) that open its subject's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit refuses calls before letting a trial through.
    pub breaker_cooldown: Duration,
    /// How long an outage must last before it is one: a call finding no responders is
    /// re-sent for up to this long, and failures in a row open the circuit only once
    /// they have lasted this long.
    pub outage_grace: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            default_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            max_attempts: 4,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(1000),
            breaker_threshold: 20,
            breaker_cooldown: Duration::from_secs(2),
            outage_grace: Duration::from_secs(2),
        }
    }
}

/// A NATS-backed transport for every generated client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    config: Arc<ClientConfig>,
    breakers: Arc<RwLock<HashMap<&'static str, Breaker>>>,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
    open_until: Option<Instant>,
}

impl Client {
    /// Wraps a connected NATS client.
    pub fn new(nats: async_nats::Client, config: ClientConfig) -> Self {
        Client {
            nats,
            config: Arc::new(config),
            breakers: Arc::default(),
        }
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    fn deadline(&self, method: &MethodInfo, options: &CallOptions) -> Instant {
        let t = options.timeout.unwrap_or_else(|| {
            if method.policy.default_deadline_ms > 0 {
                Duration::from_millis(method.policy.default_deadline_ms.into())
            } else {
                self.config.default_timeout
            }
        });
        Instant::now() + t
    }

    fn breaker_check(&self, subject: &'static str) -> Result<(), Status> {
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

    fn breaker_record(&self, subject: &'static str, health: Health) {
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

    fn backoff(&self, retry: u32) -> Duration {
        let ms = backoff_cap(&self.config, retry).as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

/// What one attempt says about the health of the service it was sent to (see the module
/// documentation: what counts against a breaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
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
fn no_responders(reply: &Result<Message, async_nats::RequestError>) -> bool {
    match reply {
        Ok(msg) => msg.status == Some(async_nats::StatusCode::NO_RESPONDERS),
        Err(e) => e.kind() == async_nats::RequestErrorKind::NoResponders,
    }
}

/// The health an attempt shows: `reply` is what came back (or the request error),
/// `attempt` how long the attempt was allowed to wait.
fn attempt_health(
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
fn silence_health(config: &ClientConfig, attempt: Duration) -> Health {
    if attempt >= config.attempt_timeout {
        Health::Failed
    } else {
        Health::Unknown
    }
}

/// The longest pause before retry number `retry` (0-based): exponential, capped.
fn backoff_cap(config: &ClientConfig, retry: u32) -> Duration {
    config
        .backoff_base
        .saturating_mul(1u32 << retry.min(16))
        .min(config.backoff_max)
}

/// Builds the request headers: remaining time, trace, request id, caller, client address.
fn request_headers(options: &CallOptions, remaining: Duration) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header_names::TIMEOUT_MS, remaining.as_millis().to_string());
    let deadline = std::time::SystemTime::now() + remaining;
    if let Ok(d) = deadline.duration_since(std::time::UNIX_EPOCH) {
        h.insert(header_names::DEADLINE, d.as_millis().to_string());
    }
    // Traces start at the edge (the gateway, or a caller that sets one); the SDK carries
    // an existing context onward rather than inventing one per call.
    if let Some(tp) = &options.traceparent {
        h.insert(header_names::TRACEPARENT, tp.as_str());
    }
    if let Some(id) = &options.request_id {
        h.insert(header_names::REQUEST_ID, id.as_str());
    }
    if let Some(c) = &options.caller {
        h.insert(header_names::CALLER, c.account_id.as_str());
        h.insert(header_names::CALLER_ROLES, c.roles.join(",").as_str());
        if let Some(s) = &options.caller_session {
            h.insert(header_names::CALLER_SESSION, s.as_str());
        }
    }
    if let Some(a) = &options.client_addr {
        h.insert(header_names::CLIENT_ADDR, a.as_str());
    }
    h
}

/// A fresh W3C trace context (`00-<trace id>-<span id>-01`), for the edge that starts a
/// trace.
pub fn new_traceparent() -> String {
    let mut r = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        r.random::<u128>().max(1),
        r.random::<u64>().max(1)
    )
}

/// A fresh idempotency key (`idk_` and 128 random bits in hex), for a caller that wants a
/// write retried safely (or see [`IdempotencyKey::Fresh`]).
pub fn new_idempotency_key() -> String {
    format!("idk_{:032x}", rand::rng().random::<u128>())
}

/// Turns a reply message into its body or the error it carries.
pub fn reply_result(msg: &Message) -> Result<Bytes, Status> {
    if let Some(status) = msg.status
        && status == async_nats::StatusCode::NO_RESPONDERS
    {
        return Err(Status::new(Code::Unavailable, "no service is answering"));
    }
    let hdr = msg.headers.as_ref();
    let err_code = hdr
        .and_then(|h| h.get(header_names::SERVICE_ERROR_CODE))
        .and_then(|v| v.as_str().parse::<u16>().ok());
    if let Some(code) = err_code {
        let message = hdr
            .and_then(|h| h.get(header_names::SERVICE_ERROR))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        return Err(Status::from_reply(Some(code), &message, &msg.payload));
    }
    Ok(msg.payload.clone())
}

fn map_request_error(subject: &str, e: async_nats::RequestError) -> Status {
    use async_nats::RequestErrorKind;
    match e.kind() {
        RequestErrorKind::TimedOut => Status::new(
            Code::DeadlineExceeded,
            format!("{subject} did not answer in time"),
        ),
        RequestErrorKind::NoResponders => Status::new(
            Code::Unavailable,
            format!("no service is answering {subject}"),
        ),
        RequestErrorKind::MaxPayloadExceeded => Status::new(
            Code::InvalidArgument,
            format!("the request to {subject} exceeds the server's max_payload"),
        ),
        RequestErrorKind::InvalidSubject | RequestErrorKind::Other => Status::new(
            Code::Unavailable,
            format!("request to {subject} failed: {e}"),
        ),
    }
}

impl Transport for Client {
    async fn unary(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<Bytes, Status> {
        let deadline = self.deadline(method, options);
        let body = match &options.idempotency_key {
            IdempotencyKey::AsIs => body,
            IdempotencyKey::Fresh if method.idempotency_key != 0 => {
                method.with_idempotency_key(body, &new_idempotency_key())
            }
            IdempotencyKey::Fresh => body,
            IdempotencyKey::Use(key) => method.with_idempotency_key(body, key),
        };
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
            // The service is told this attempt's deadline, not the call's: past it the
            // caller no longer waits for this attempt, so neither should the work.
            let request = async_nats::Request::new()
                .payload(body.clone())
                .headers(request_headers(options, this_try))
                .timeout(Some(this_try));
            let reply = self.nats.send_request(method.subject, request).await;
            self.breaker_record(
                method.subject,
                attempt_health(&self.config, &reply, this_try),
            );
            let unserved = no_responders(&reply);
            let result = match reply {
                Ok(msg) => reply_result(&msg),
                Err(e) => Err(map_request_error(method.subject, e)),
            };
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

    async fn server_stream(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<BoxStream<'static, Result<Bytes, Status>>, Status> {
        self.breaker_check(method.subject)?;
        let deadline = self.deadline(method, options);
        let inbox = self.nats.new_inbox();
        let mut sub = self.nats.subscribe(inbox.clone()).await.map_err(|e| {
            Status::new(Code::Unavailable, format!("cannot open a reply inbox: {e}"))
        })?;
        let stream_id = format!("{:032x}", rand::random::<u128>());
        // From here on, a caller that goes away (drops the stream, or gives up waiting
        // for its start) tells the server, which stops the work behind the stream.
        let mut cancel = CancelOnDrop(Some((
            self.nats.clone(),
            aicore_proto::stream_cancel_subject(method.subject),
            stream_id.clone(),
        )));
        // The first message must come within the deadline; after that the stream lives as
        // long as the caller keeps it (dropping it unsubscribes). A start that found no
        // responders reached no one and is sent again, as for unary calls.
        let mut unserved_since: Option<Instant> = None;
        let mut retries = 0;
        let first = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut headers = request_headers(options, remaining);
            headers.insert(header_names::STREAM_ID, stream_id.as_str());
            self.nats
                .publish_with_reply_and_headers(
                    method.subject,
                    inbox.clone(),
                    headers,
                    body.clone(),
                )
                .await
                .map_err(|e| Status::new(Code::Unavailable, format!("cannot send request: {e}")))?;
            let first = match tokio::time::timeout(remaining, sub.next()).await {
                Err(_) => {
                    self.breaker_record(method.subject, silence_health(&self.config, remaining));
                    return Err(Status::new(
                        Code::DeadlineExceeded,
                        format!("{} did not start streaming in time", method.subject),
                    ));
                }
                Ok(None) => return Err(Status::new(Code::Unavailable, "connection closed")),
                Ok(Some(m)) => m,
            };
            if first.status != Some(async_nats::StatusCode::NO_RESPONDERS) {
                break first;
            }
            self.breaker_record(method.subject, Health::Failed);
            let since = *unserved_since.get_or_insert_with(Instant::now);
            let pause = self.backoff(retries);
            retries += 1;
            if since.elapsed() >= self.config.outage_grace || Instant::now() + pause >= deadline {
                cancel.disarm();
                return Err(Status::new(
                    Code::Unavailable,
                    format!("no service is answering {}", method.subject),
                ));
            }
            tokio::time::sleep(pause).await;
            self.breaker_check(method.subject)?;
        };
        let first_result = reply_result(&first);
        if first_result.is_err() {
            // The server ended the stream itself.
            cancel.disarm();
        }
        self.breaker_record(method.subject, Health::Answered);
        first_result.as_ref().map_err(Clone::clone)?;
        // Items until the end marker; an error item ends the stream too; heartbeats (a
        // quiet stream saying it is alive) are skipped.
        let stream = futures::stream::unfold(Some((Some(first), sub)), |state| async move {
            let (mut pending, mut sub) = state?;
            loop {
                let msg = match pending.take() {
                    Some(m) => m,
                    None => sub.next().await?,
                };
                let marker = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(header_names::STREAM))
                    .map(|v| v.as_str().to_string());
                match marker.as_deref() {
                    Some("end") => return None,
                    Some("heartbeat") => continue,
                    _ => {}
                }
                return match reply_result(&msg) {
                    Ok(b) => Some((Ok(b), Some((None, sub)))),
                    Err(e) => Some((Err(e), None)),
                };
            }
        });
        Ok(Cancellable {
            inner: stream.boxed(),
            cancel,
        }
        .boxed())
    }
}

/// Tells the server that the caller abandoned a stream, when dropped armed: an empty
/// message with the stream's id on the RPC's cancel subject. Disarmed once the server
/// ended the stream (the end marker or an error).
struct CancelOnDrop(Option<(async_nats::Client, String, String)>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some((nats, subject, id)) = self.0.take() else {
            return;
        };
        // Publishing only queues the message on the connection; a task is needed because
        // `drop` cannot wait. Without a runtime (the process is ending) nothing is sent and
        // the server stops at the stream's own bounds.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut h = HeaderMap::new();
                h.insert(header_names::STREAM_ID, id.as_str());
                let _ = nats.publish_with_headers(subject, h, Bytes::new()).await;
            });
        }
    }
}

/// A server stream as the caller sees it, telling the server when it is dropped early.
struct Cancellable {
    inner: BoxStream<'static, Result<Bytes, Status>>,
    cancel: CancelOnDrop,
}

impl futures::Stream for Cancellable {
    type Item = Result<Bytes, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.poll_next_unpin(cx));
        if matches!(item, None | Some(Err(_))) {
            self.cancel.disarm();
        }
        std::task::Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_has_w3c_shape() {
        let t = new_traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
    }

    fn reply(error: Option<Code>) -> Message {
        let headers = error.map(|code| {
            let mut h = HeaderMap::new();
            let status = Status::new(code, "x");
            h.insert(header_names::SERVICE_ERROR, "x");
            h.insert(
                header_names::SERVICE_ERROR_CODE,
                status.http_status().to_string().as_str(),
            );
            h
        });
        Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: Bytes::new(),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    /// A DeadlineExceeded reply is judged as silence: it counts only when the attempt had
    /// a reasonable time, and it never resets a breaker (the service's reply and the
    /// caller's timer race, so the outcome must not depend on which comes first).
    #[test]
    fn a_deadline_exceeded_reply_is_judged_like_silence() {
        let c = ClientConfig::default();
        let whole = c.attempt_timeout;
        let short = c.attempt_timeout / 10;
        let late = Ok(reply(Some(Code::DeadlineExceeded)));
        assert_eq!(attempt_health(&c, &late, whole), Health::Failed);
        assert_eq!(attempt_health(&c, &late, short), Health::Unknown);
        for other in [None, Some(Code::Unavailable), Some(Code::InvalidArgument)] {
            assert_eq!(
                attempt_health(&c, &Ok(reply(other)), whole),
                Health::Answered,
                "{other:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = ClientConfig::default();
        assert_eq!(backoff_cap(&c, 0), c.backoff_base);
        assert_eq!(backoff_cap(&c, 2), c.backoff_base * 4);
        assert_eq!(backoff_cap(&c, 30), c.backoff_max);
    }
}
